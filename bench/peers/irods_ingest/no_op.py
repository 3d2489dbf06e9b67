# No-op event handler for irods-capability-automated-ingest 0.7.0, used as a
# benchmark peer of `sluice bench` (see run.sh beside this file).
#
# The tool is run with NO iRODS server. What remains is its real pipeline:
# a Celery job that scans the tree (one `filesystem_sync_path` task per
# directory), batches files into `filesystem_sync_files` tasks (50 files per
# task by default), takes a Redis lock per file, checks and writes its
# per-file sync-time cache in Redis, and calls this handler for every file.
#
# Operation.NO_OP makes every file and directory a no-op (the tool's own
# `no_op` function), so no data object is registered or uploaded. Run with
# --initial_ingest so that file tasks skip `session.data_objects.exists`.
#
# Creating an iRODSSession does not connect (python-irodsclient connects on
# the first request), so fake IRODS_* environment variables are enough, with
# one exception: the directory task (`sync_data_from_dir` in
# irods_capability_automated_ingest/irods/filesystem.py) calls
# `session.collections.exists(target)` unconditionally, even for NO_OP and
# even with --initial_ingest. Without a server that call fails with a network
# error and every directory task fails. The patch below answers "does not
# exist" without a round trip. The tool loads this file inside each Celery
# worker process (it stores the handler's source in Redis and imports it from
# /tmp), so the patch takes effect in the workers, where the tasks run.
from irods.manager.collection_manager import CollectionManager

from irods_capability_automated_ingest.core import Core
from irods_capability_automated_ingest.utils import Operation

CollectionManager.exists = lambda self, path: False


class event_handler(Core):
    @staticmethod
    def operation(session, meta, **options):
        return Operation.NO_OP
