"""The machinery every primitive stands on: it knows Redis, but no primitive.

* :mod:`.link`: connections borrowed from the caller's pool or cluster node,
  un-retried command batches, ``retrying()``, scripts, replica ``WAIT``.
* :mod:`.keys`: key names and the cluster hash tag.
* :mod:`.validate`: argument checks, before anything is sent.
* :mod:`.renewal`: the event loop's one renewal task.
* :mod:`.waiting`: local FIFO waiters served by a few blocking connections.

Primitives live in their own packages (:mod:`redsync.semaphore`,
:mod:`redsync.event`) and reach Redis only through this layer.
"""
