"""moto's server with DynamoDB's item operations made atomic with respect to each other.

moto 5.2.5 serves requests on threads, and its TransactWriteItems snapshots every table it
touches (a deep copy) before applying the transaction; when any condition fails it puts the
snapshots back, undoing every write that other requests made to those tables meanwhile. A
conditional transaction that fails (routine for Ferry: a lost race, a duplicate) could so
revert another job's finished state, a write DynamoDB had acknowledged: real DynamoDB never
does that. One lock around the backend's item operations gives the isolation DynamoDB has.
Started by tests/src/moto.rs as `python3 tests/moto_server.py -H HOST -p PORT`.
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()

_ITEM_OPERATIONS = (
    "batch_execute_statement",
    "batch_get_item",
    "batch_write_item",
    "delete_item",
    "execute_statement",
    "execute_transaction",
    "get_item",
    "put_item",
    "query",
    "scan",
    "transact_get_items",
    "transact_write_items",
    "update_item",
)


def _serialized(operation):
    @functools.wraps(operation)
    def run(*args, **kwargs):
        with _LOCK:
            return operation(*args, **kwargs)

    return run


for _name in _ITEM_OPERATIONS:
    setattr(DynamoDBBackend, _name, _serialized(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
