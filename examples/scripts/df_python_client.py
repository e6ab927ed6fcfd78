#!/usr/bin/env python3
"""Drives `demo serve` with the unmodified Durable Functions Python client.

Usage:
    python3 df_python_client.py http://127.0.0.1:PORT/runtime/webhooks/durabletask/

Needs `pip install azure-functions-durable==1.7.0` (Python 3.10+). Every step asserts what
the server answered; the script prints one line per step and exits non-zero on the first
failure. `examples/tests/df_python_client.rs` runs it against a fresh `demo serve`.
"""

import asyncio
import datetime
import json
import re
import sys
import time
import traceback
import uuid

import azure.durable_functions as df
import azure.functions as func
from azure.durable_functions.models.OrchestrationRuntimeStatus import (
    OrchestrationRuntimeStatus as Status,
)
from azure.durable_functions.models.utils import http_utils

# Longest any single step waits for the engine (a guard against hangs, not a timing check).
GUARD_SECONDS = 60
# History times carry seven fractional digits (status times none), as in Durable Functions.
HISTORY_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


def binding(base: str) -> str:
    """The JSON a Functions host injects for a `durableClient` binding."""
    inst = base + "instances/INSTANCEID"
    q = "taskHub=TestHub&connection=Storage"
    return json.dumps({
        "taskHubName": "TestHub",
        "rpcBaseUrl": base,
        "creationUrls": {
            "createNewInstancePostUri": base + "orchestrators/{functionName}[/{instanceId}]",
            "createAndWaitOnNewInstancePostUri": base + "orchestrators/{functionName}[/{instanceId}]"
            "?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}",
        },
        "managementUrls": {
            "id": "INSTANCEID",
            "statusQueryGetUri": f"{inst}?{q}",
            "sendEventPostUri": f"{inst}/raiseEvent/{{eventName}}?{q}",
            "terminatePostUri": f"{inst}/terminate?reason={{text}}&{q}",
            "rewindPostUri": f"{inst}/rewind?reason={{text}}&{q}",
            "purgeHistoryDeleteUri": f"{inst}?{q}",
            "restartPostUri": f"{inst}/restart?{q}",
            "suspendPostUri": f"{inst}/suspend?reason={{text}}&{q}",
            "resumePostUri": f"{inst}/resume?reason={{text}}&{q}",
        },
    })


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def step(text: str) -> None:
    print(f"ok   {text}", flush=True)


async def until(what: str, probe):
    """Calls `probe` (async, returning a value or None) until it returns a value."""
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_status(c, iid: str, status: Status, **flags):
    async def probe():
        st = await c.get_status(iid, **flags)
        return st if st and st.runtime_status == status else None
    return await until(f"{iid} to be {status.value}", probe)


def history(st) -> list:
    events = getattr(st, "historyEvents", None)
    check(isinstance(events, list), f"historyEvents missing: {st.to_json()}")
    return events


def payload(value):
    """A payload the client sent double-encoded comes back as the JSON text it sent."""
    return json.loads(value) if isinstance(value, str) else value


async def main(base: str) -> None:
    c = df.DurableOrchestrationClient(binding(base))
    started_at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    run = uuid.uuid4().hex[:8]
    request = func.HttpRequest(method="GET", url=base + "api/start", body=b"")

    # 400: an unknown orchestrator; start_new raises body["ExceptionMessage"].
    try:
        await c.start_new("no_such_orchestrator", None, 1)
        raise AssertionError("starting an unknown orchestrator succeeded")
    except AssertionError:
        raise
    except Exception as e:  # the client raises a bare Exception
        check("no_such_orchestrator" in str(e), f"unexpected 400 message: {e!r}")
    step("start_new of an unknown orchestrator raises the server's ExceptionMessage")

    # Start with an input (sent double-encoded: the body is "[\"Tokyo\", \"Lima\"]").
    seq = await c.start_new("hello_sequence", None, ["Tokyo", "Lima"])
    check(isinstance(seq, str) and seq, f"start_new returned {seq!r}")
    resp = await c.wait_for_completion_or_create_check_status_response(request, seq, 30000, 50)
    check(resp.status_code == 200, f"wait_for_completion: {resp.status_code} {resp.get_body()}")
    check(json.loads(resp.get_body()) == ["Hello Tokyo!", "Hello Lima!"],
          f"output {resp.get_body()!r}")
    step(f"start_new(hello_sequence, input) -> {seq}, completed within wait_for_completion")

    # Status with history, input and history output.
    st = await c.get_status(seq, show_history=True, show_history_output=True, show_input=True)
    check(st.runtime_status == Status.Completed, f"status {st.runtime_status}")
    check(st.output == ["Hello Tokyo!", "Hello Lima!"], f"output {st.output!r}")
    check(payload(st.input_) == ["Tokyo", "Lima"], f"input {st.input_!r}")
    check(st.created_time.microsecond == 0 and st.last_updated_time.microsecond == 0,
          f"status times have second precision: {st.created_time} {st.last_updated_time}")
    events = history(st)
    kinds = [e["EventType"] for e in events]
    check(kinds == ["ExecutionStarted", "TaskCompleted", "TaskCompleted", "ExecutionCompleted"],
          f"history {kinds}")
    check(events[0]["FunctionName"] == "hello_sequence", f"{events[0]}")
    check(events[1]["FunctionName"] == "greet" and events[1]["Input"] == "Tokyo"
          and events[1]["Result"] == "Hello Tokyo!", f"{events[1]}")
    check(events[3]["Result"] == ["Hello Tokyo!", "Hello Lima!"], f"{events[3]}")
    for e in events:
        for key in ("Timestamp", "ScheduledTime"):
            if key in e:
                check(HISTORY_TIME.match(e[key]) is not None, f"{key} {e[key]}")
    plain = history(await c.get_status(seq, show_history=True))
    check(all("Result" not in e for e in plain), f"Result without showHistoryOutput: {plain}")
    step("get_status with history: DF event shapes, JSON values, DF timestamps")

    # Start with an explicit id, then raise the event it waits for.
    approval = f"py-approval-{run}"
    got = await c.start_new("approval_flow", approval, {"item": "po-7", "timeout_hours": 72})
    check(got == approval, f"start_new with id returned {got!r}")
    await wait_status(c, approval, Status.Running)
    resp = await c.wait_for_completion_or_create_check_status_response(request, approval, 200, 50)
    check(resp.status_code == 202, f"still running: {resp.status_code}")
    check(resp.headers.get("Location", "").startswith(base + "instances/" + approval),
          f"Location {resp.headers.get('Location')}")
    await c.raise_event(approval, "approval", {"approved": True, "by": "ada"})
    st = await wait_status(c, approval, Status.Completed, show_history=True)
    check(st.output == "po-7 approved by ada", f"output {st.output!r}")
    raised = [e for e in history(st) if e["EventType"] == "EventRaised"]
    check(len(raised) == 1 and raised[0]["Name"] == "approval"
          and payload(raised[0]["Input"]) == {"approved": True, "by": "ada"}, f"{raised}")
    try:
        await c.raise_event(approval, "approval", {"approved": False, "by": "bob"})
        raise AssertionError("raising on a completed instance succeeded")
    except AssertionError:
        raise
    except Exception as e:
        check("is gone" in str(e), f"{e!r}")
    step(f"start_new(approval_flow, id={approval}) + raise_event completed it; 410 afterwards")

    # Queries by status and id prefix.
    completed = {s.instance_id for s in await c.get_status_by(runtime_status=[Status.Completed])}
    check({seq, approval} <= completed, f"completed query: {completed}")
    prefixed = await c.get_status_by(instance_id_prefix=f"py-approval-{run}")
    check([s.instance_id for s in prefixed] == [approval], f"prefix query: {prefixed}")
    everything = {s.instance_id for s in await c.get_status_all()}
    check({seq, approval} <= everything, f"get_status_all: {everything}")
    step("get_status_by(runtime_status / instance_id_prefix) and get_status_all")

    # Entity: signal with input (double-encoded "5"), read, signal without input.
    stats = df.EntityId("Stats", f"py-{run}")
    check(not (await c.read_entity_state(stats)).entity_exists, "entity exists before a signal")
    await c.signal_entity(stats, "record", 5)
    await c.signal_entity(stats, "record", 7)

    async def counted(n):
        r = await c.read_entity_state(stats)
        return r.entity_state if r.entity_exists and r.entity_state["count"] == n else None
    state = await until("two readings", lambda: counted(2))
    check(state == {"count": 2, "sum": 12, "max": 7}, f"state {state}")
    await c.signal_entity(stats, "reset")
    state = await until("the reset", lambda: counted(0))
    check(state == {"count": 0, "sum": 0, "max": None}, f"state {state}")
    step("signal_entity with inputs, read_entity_state, signal without input")

    # Suspend, resume, terminate.
    held = await c.start_new("approval_flow", None, {"item": "po-8", "timeout_hours": 72})
    await wait_status(c, held, Status.Running)
    await c.suspend(held, "nap time")
    await wait_status(c, held, Status.Suspended)
    await c.resume(held, "wake up")
    await wait_status(c, held, Status.Running)
    await c.terminate(held, "no longer needed")
    st = await wait_status(c, held, Status.Terminated, show_history=True)
    kinds = [e["EventType"] for e in history(st)]
    for kind in ("ExecutionSuspended", "ExecutionResumed", "ExecutionTerminated"):
        check(kind in kinds, f"{kind} missing from {kinds}")
    await c.terminate(held, "again")  # 410 is success for this client
    step("suspend / resume / terminate")

    # A failed instance (an entity key with `/` is refused inside the orchestration), rewound.
    failed = await c.start_new("transfer", None, {"from": "a/b", "to": "c", "amount": 1})
    st = await wait_status(c, failed, Status.Failed)
    check("instance id" in json.dumps(st.output), f"failure {st.output!r}")
    await c.rewind(failed, "try again")

    async def rewound():
        st = await c.get_status(failed, show_history=True)
        kinds = [e["EventType"] for e in history(st)]
        return st if "ExecutionRewound" in kinds and st.runtime_status == Status.Failed else None
    await until("the rewind to be applied", rewound)
    step("rewind of a failed instance (it fails again the same way)")

    # Restart, with a new id and under the same id.
    restarted = await c.restart(seq)
    new_id = restarted["id"] if isinstance(restarted, dict) else restarted
    check(new_id != seq, f"restart returned {restarted!r}")
    st = await wait_status(c, new_id, Status.Completed)
    check(st.output == ["Hello Tokyo!", "Hello Lima!"], f"restarted output {st.output!r}")
    again = await c.restart(seq, restart_with_new_instance_id=False)
    same_id = again["id"] if isinstance(again, dict) else again
    check(same_id == seq, f"restart in place returned {again!r}")
    await wait_status(c, seq, Status.Completed)
    step(f"restart -> {new_id}; restart in place -> {seq}")

    # Purge one, then by filter.
    check((await c.purge_instance_history(seq)).instances_deleted == 1, "purge one")
    check(not await c.get_status(seq), "purged instance still answers")
    check((await c.purge_instance_history(seq)).instances_deleted == 0, "purge twice")
    result = await c.purge_instance_history_by(
        created_time_from=started_at - datetime.timedelta(minutes=1),
        runtime_status=[Status.Completed, Status.Terminated])
    check(result.instances_deleted >= 3, f"purged {result.instances_deleted}")
    check(not await c.get_status(approval), "purged by filter still answers")
    step(f"purge_instance_history (1, then 0) and purge_instance_history_by ({result.instances_deleted})")


async def run(base: str) -> None:
    try:
        await main(base)
    finally:
        await http_utils._close_session()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].endswith("/"):
        sys.exit("usage: df_python_client.py http://127.0.0.1:PORT/runtime/webhooks/durabletask/")
    try:
        asyncio.run(run(sys.argv[1]))
    except Exception:
        traceback.print_exc()
        print("FAILED", flush=True)
        sys.exit(1)
    print("all Durable Functions client checks passed", flush=True)
