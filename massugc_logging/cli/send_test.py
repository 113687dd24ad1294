"""``send-test``: one clearly-marked test event, and the outcome in words."""

from __future__ import annotations

import argparse
import logging
import logging.config
import time
import uuid

from massugc_logging.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Output,
    describe_outcome,
    make_transport,
)
from massugc_logging.keystore import ENV_VAR
from massugc_logging.payload import PayloadSettings, build_event
from massugc_logging.pipeline.transport import (
    OutcomeKind,
)
from massugc_logging.pipeline.trust import FIX as TLS_FIX

_OUTCOME_HINTS = {
    OutcomeKind.AUTH: "the API refused the key: check which key is used with "
                      "'massugc-logging key show', then store the right one with "
                      f"'massugc-logging key set' (or correct {ENV_VAR})",
    OutcomeKind.TRANSIENT: "the API could not be reached or is busy: check the network and "
                           "the API URL (--api-url or MASSUGC_API_URL), then try again",
    OutcomeKind.PERMANENT: "the server rejected the event: check the endpoint (--endpoint; "
                           "older servers use /api/desktop/usage)",
    OutcomeKind.UNTRUSTED: "the API's certificate is not trusted here: " + TLS_FIX,
}


def cmd_send_test(args: argparse.Namespace, out: Output) -> int:
    """Send one clearly-marked test event to the configured API."""

    transport = make_transport(args, out)
    if transport is None:
        return EXIT_PROBLEM
    record = logging.LogRecord("massugc.jobs", logging.INFO, __file__, 0,
                               "massugc-logging send-test", None, None)
    record.__dict__.update({"job_name": "massugc-logging send-test", "run_id": str(uuid.uuid4()),
                            "output_path": "send-test", "workflow_type": "test"})
    built = build_event(record, PayloadSettings(), exception=None,
                        fallback_id=str(uuid.uuid4()), now=time.time())
    out.say(f"Sending a test event to {transport.url} (trusting: "
            f"{transport.trust.description}) ...")
    outcome = transport.send(built.body(), built.event_id)
    transport.close()
    out.say(f"Outcome: {describe_outcome(outcome)}")
    if outcome.delivered:
        return EXIT_OK
    out.problem(_OUTCOME_HINTS.get(outcome.kind, "see the outcome above"))
    return EXIT_PROBLEM


# -- check --------------------------------------------------------------------------
