"""Index function_app with the real Functions worker and call /api/health through it.

Run by tests/test_worker_indexing.py with the cached Python 3.13 worker venv:

    python probe.py PROTOS_DIR APP_DIR

It plays the Functions host's part of the protocol with real protobuf messages (compiled
from tests/worker/proto/): WorkerInitRequest (the worker imports function_app.py and
indexes it), FunctionsMetadataRequest, then an InvocationRequest carrying an RpcHttp GET
/api/health, as the host sends for an HTTP trigger. Prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
import uuid
from typing import Any


def _protos(protos_dir: str) -> types.SimpleNamespace:
    sys.path.insert(0, protos_dir)
    from workerprotos import FunctionRpc_pb2 as rpc  # type: ignore[import-not-found]
    from workerprotos.shared import NullableTypes_pb2 as nullable  # type: ignore[import-not-found]

    # The proxy worker hands the runtime one module with every message class; this is that module.
    names = {n: getattr(m, n) for m in (nullable, rpc) for n in dir(m) if not n.startswith("_")}
    return types.SimpleNamespace(**names)


def _envelope(protos: types.SimpleNamespace, **message: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        request=protos.StreamingMessage(**message),
        properties={"host": "127.0.0.1", "protos": protos},
    )


def _status(protos: types.SimpleNamespace, result: Any) -> dict[str, Any]:
    return {
        "ok": result.status == protos.StatusResult.Success,
        "exception": result.exception.message if result.HasField("exception") else None,
    }


def _close_pools() -> None:
    # The host kills the worker; a script that exits must close the app's pool itself, or
    # interpreter shutdown waits five seconds on each pool thread. Found by type, not by
    # module path, so moving shared/ does not break this.
    import gc

    from psycopg_pool import ConnectionPool

    for obj in gc.get_objects():
        if isinstance(obj, ConnectionPool):
            obj.close()


async def _main(protos_dir: str, app_dir: str) -> dict[str, Any]:
    protos = _protos(protos_dir)
    sys.path.insert(0, app_dir)  # the host starts the worker in the app's directory

    import azure.functions
    import azure_functions_runtime as worker

    summary: dict[str, Any] = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "azure_functions": azure.functions.__version__,
    }
    init = await worker.worker_init_request(_envelope(
        protos, worker_init_request=protos.WorkerInitRequest(function_app_directory=app_dir, host_version="4.0"),
    ))
    summary["init"] = _status(protos, init.result)
    if not summary["init"]["ok"]:
        return summary

    metadata = await worker.functions_metadata_request(_envelope(
        protos, functions_metadata_request=protos.FunctionsMetadataRequest(function_app_directory=app_dir),
    ))
    summary["metadata"] = _status(protos, metadata.result)
    functions = {
        m.name: {
            "function_id": m.function_id,
            "entry_point": m.entry_point,
            "script_file": m.script_file,
            "worker_indexed": m.properties.get("worker_indexed"),
            "raw_bindings": [json.loads(b) for b in m.raw_bindings],
            "bindings": {
                name: {"type": b.type, "direction": protos.BindingInfo.Direction.Name(b.direction)}
                for name, b in m.bindings.items()
            },
        }
        for m in metadata.function_metadata_results
    }
    summary["functions"] = functions

    health = functions.get("health_check")
    if health is None:
        return summary
    (trigger,) = [b["name"] for b in health["raw_bindings"] if b["type"] == "httpTrigger"]
    worker.start_threadpool_executor()
    try:
        http = protos.RpcHttp(
            method="GET",
            url="http://127.0.0.1:7071/api/health",
            headers={"host": "127.0.0.1:7071", "user-agent": "custos-worker-probe"},
            body=protos.TypedData(bytes=b""),
            params={},
            query={},
        )
        invocation = await worker.invocation_request(_envelope(
            protos, invocation_request=protos.InvocationRequest(
                invocation_id=str(uuid.uuid4()),
                function_id=health["function_id"],
                input_data=[protos.ParameterBinding(name=trigger, data=protos.TypedData(http=http))],
            ),
        ))
    finally:
        worker.stop_threadpool_executor()
        _close_pools()
    summary["invocation"] = _status(protos, invocation.result)
    reply = invocation.return_value.http
    body = reply.body.bytes if reply.body.WhichOneof("data") == "bytes" else reply.body.string.encode()
    summary["health"] = {
        "status_code": reply.status_code,
        "headers": {k.lower(): v for k, v in reply.headers.items()},
        "body": body.decode(),
    }
    return summary


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(sys.argv[1], sys.argv[2]))))
