"""Our settings masked in Celery's own reports (`celery report`, ``app.bugreport()``,
`celery inspect conf`). Depends on nothing of ours: the package runs it at import
whenever Celery is loaded, so a worker that imports redbeat_safe masks them too."""

from __future__ import annotations

import re

from celery.app import utils as celery_utils

#: Our settings that may hold a secret and whose names Celery's filter misses.
HIDDEN = ("redbeat_safe_redis_url",)


def hide_in_celery_reports() -> None:
    """Mask our URL in `celery report`, ``app.bugreport()`` and `celery inspect conf`.

    Celery masks a setting there when its name matches ``HIDDEN_SETTINGS``
    (API|TOKEN|KEY|SECRET|PASS|...); ``redbeat_safe_redis_url`` does not, and
    its password (``user:pass@`` or ``?password=``) would be printed. Mappings
    are filtered key by key, so ``redbeat_safe_redis_options`` already loses
    its ``password``, ``sentinel_password`` and ``ssl_*key*`` values. Run at
    import: the `celery` command imports us through the ``schedules`` plugin.
    """
    current = celery_utils.HIDDEN_SETTINGS
    missing = [name for name in HIDDEN if not current.search(name)]
    if missing:
        extra = "|".join(re.escape(name) for name in missing)
        celery_utils.HIDDEN_SETTINGS = re.compile(f"{current.pattern}|{extra}", current.flags | re.IGNORECASE)

