"""After an upload commits, ingest what it accepted (docs/device-api.md "Batches"; issue #6 "Ingest").

``POST /devices/batches`` calls :func:`ingest_after_commit` with its unit of work. With Redis configured the
ingest is one Celery task for the workers; without (the embedded default) it runs in this process right after the
commit. Either way a failure never undoes the upload: the next clearing run ingests whatever is left.
"""

from __future__ import annotations

import logging
import threading
import weakref

from sqlalchemy import Engine

from backoffice.db import UnitOfWork
from backoffice.errors import KeystoreError, OnecardError
from backoffice.settings import Settings
from clearing.ingest import IngestResult, ingest_with_retry, uploads_to_ingest
from clearing.runs import ClearingEnv

log = logging.getLogger("onecard.clearing.intake")

_lock = threading.Lock()
_embedded: weakref.WeakKeyDictionary[Engine, ClearingEnv] = weakref.WeakKeyDictionary()


def ingest_pending(env: ClearingEnv) -> list[IngestResult]:
    """Ingest each accepted upload not ingested yet, one unit of work per batch (spec §5)."""
    with env.uow() as uow:
        uploads = uploads_to_ingest(uow.session)
    return [ingest_with_retry(env.uow, upload_id, env.verifier()) for upload_id in uploads]


def _embedded_env(settings: Settings, engine: Engine) -> ClearingEnv:
    with _lock:
        env = _embedded.get(engine)
        if env is None:
            env = _embedded[engine] = ClearingEnv.for_engine(engine, settings)
        return env


def ingest_after_commit(uow: UnitOfWork, settings: Settings) -> None:
    """Ingest the batches this unit of work accepts, once it has committed (``POST /devices/batches``).

    With Redis: one ``clearing.ingest_pending`` task. Without: in this process, right after the commit. A failure
    is logged, never raised: the upload stands, and the next clearing run ingests whatever is left.
    """
    engine = uow.session.get_bind()

    def ingest() -> None:
        try:
            if settings.redis_url:
                from clearing.tasks import QUEUE, make_celery

                make_celery(settings.redis_url).send_task("clearing.ingest_pending", queue=QUEUE)
            elif isinstance(engine, Engine):
                ingest_pending(_embedded_env(settings, engine))
        except (KeystoreError, OnecardError) as exc:
            log.warning("ingest after upload postponed to the next run: %s", exc)
        except Exception:
            log.exception("ingest after upload failed; the next clearing run ingests the batch")

    uow.after_commit(ingest)
