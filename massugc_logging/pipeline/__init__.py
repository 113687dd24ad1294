"""The delivery pipeline behind :class:`~massugc_logging.CloudHandler`.

Data flows one way, each stage a module with a narrow interface::

    intake.py      one thread between emit and the outbox: build, redact, write ahead
    outbox.py      the spool file, with memory standing in while it cannot be used
    spool.py       the only module that touches SQLite
    delivery.py    the engine (lease, hand out, settle) and its worker threads
    decisions.py   pure: (policy, state, outcome) -> the event's fate and the next state
    retry.py       the retry policy, an immutable value, and the delays it implies
    transport.py   the only module that talks HTTP; outcomes, never exceptions
    trust.py       which certificates are trusted
    keyfollow.py   the key in use, kept in step with the key store
    processes.py   whether the process that owned spool rows is gone

Nothing here is public API: the handler, the command line and the benchmarks
use it; apps use :mod:`massugc_logging`.
"""
