"""Atelier's model server: one replica of a deployment, KServe's Python model server speaking
the Open Inference Protocol v2 (`/v2/health/ready`, `/v2/models/{name}`, `.../infer`), so any
OIP v2 client works against it unchanged.

    python -m atelier.serving <model directory> --name NAME [--fd FD | --socket PATH | --port PORT]

The directory holds either `model.pt`, a TorchScript module, served with no code of the
user's (each request's inputs, in order, are its arguments; each output tensor is one output),
or `predictor.py` with a class `Predictor`: `Predictor(model_dir)` loads once, and
`predict(inputs)` maps {input name: numpy array} to an array or {output name: array}. A
`Predictor` that is a `kserve.Model` is served as it is (its own preprocess, postprocess).

On the local backend the hub binds the replica's socket where only root can reach it and
hands it over (`--fd`); in a container with no network (the Docker backend) the server binds
`--socket` in a directory only that container mounts. SIGTERM drains: the open requests
finish, then it exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import socket
import sys
from pathlib import Path

import kserve
import numpy
from kserve.model_server import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from kserve.utils.numpy_codec import from_np_dtype

TORCHSCRIPT, PREDICTOR = "model.pt", "predictor.py"
KEEP_ALIVE_SECONDS = 75  # longer than the router keeps an idle connection: it closes first


class Served(kserve.Model):
    """A model directory as a KServe model: its TorchScript module or its `Predictor`."""

    def __init__(self, name: str, directory: Path):
        super().__init__(name)
        self.directory = directory
        self.predictor = None
        self.module = None

    def load(self) -> bool:
        if (self.directory / PREDICTOR).is_file():
            self.predictor = load_predictor(self.directory)
        elif (self.directory / TORCHSCRIPT).is_file():
            import torch

            self.module = torch.jit.load(str(self.directory / TORCHSCRIPT), map_location="cpu")
            self.module.eval()
        else:
            raise FileNotFoundError(f"{self.directory} holds neither {TORCHSCRIPT} nor {PREDICTOR}")
        self.ready = True
        return True

    def outputs(self, inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]:
        """The model's answer to one request's inputs (by name, in order), by output name."""
        if self.module is not None:
            return self.run_module(list(inputs.values()))
        outputs = self.predictor.predict(inputs)
        return outputs if isinstance(outputs, dict) else {"output-0": outputs}

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        outputs = self.outputs({tensor.name: tensor.as_numpy() for tensor in payload.inputs})
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[to_output(name, value) for name, value in outputs.items()],
        )

    def run_module(self, arrays: list[numpy.ndarray]) -> dict[str, numpy.ndarray]:
        import torch

        with torch.inference_mode():
            result = self.module(*(torch.from_numpy(array) for array in arrays))
        tensors = result if isinstance(result, tuple | list) else (result,)
        return {f"output-{i}": tensor.numpy() for i, tensor in enumerate(tensors)}


def load_predictor(directory: Path):
    """`predictor.py`'s `Predictor`, imported from the model directory (its siblings importable)."""
    sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location("predictor", directory / PREDICTOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "Predictor"):
        raise AttributeError(f"{directory / PREDICTOR} defines no class Predictor")
    return module.Predictor(str(directory))


def to_output(name: str, value) -> InferOutput:
    array = numpy.asarray(value)
    output = InferOutput(
        name=str(name), shape=list(array.shape), datatype=from_np_dtype(array.dtype)
    )
    output.set_data_from_numpy(array, binary_data=False)
    return output


def serve(
    name: str, directory: Path, listening: socket.socket | None, port: int | None, drain: int
) -> None:
    import uvicorn

    model = load_predictor(directory) if (directory / PREDICTOR).is_file() else None
    if not isinstance(model, kserve.Model):
        model = Served(name, directory)
    model.name = name
    model.load()
    server = kserve.ModelServer(enable_grpc=False, enable_latency_logging=False)
    server.register_model(model)
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0
    )
    rest.create_application()
    config = uvicorn.Config(
        FASTAPI_APP_IMPORT_STRING,
        fd=None if listening is None else listening.fileno(),
        host="127.0.0.1",
        port=port or 8080,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=drain,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atelier.serving", description=__doc__)
    parser.add_argument("directory", type=Path, help="the model: model.pt or predictor.py")
    parser.add_argument("--name", required=True, help="the model's name in /v2/models/{name}")
    parser.add_argument(
        "--drain-seconds",
        type=int,
        default=60,
        help="how long open requests may run on after SIGTERM",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--fd", type=int, help="a bound socket to listen on, inherited (default: ATELIER_LISTEN_FD)"
    )
    where.add_argument("--port", type=int, help="a loopback TCP port to listen on")
    where.add_argument("--socket", type=Path, help="a Unix socket to bind and listen on")
    args = parser.parse_args(argv)
    if args.port is None and args.fd is None and args.socket is None:
        if "ATELIER_LISTEN_FD" not in os.environ:
            parser.error("give --fd, --socket or --port")
        args.fd = int(os.environ["ATELIER_LISTEN_FD"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kserve.logging.trace_logger.setLevel(logging.WARNING)  # a line per request otherwise
    listening = None
    if args.fd is not None:
        listening = socket.socket(fileno=args.fd)
    elif args.socket is not None:
        listening = bind(args.socket)
    serve(args.name, args.directory.absolute(), listening, args.port, args.drain_seconds)


def bind(path: Path) -> socket.socket:
    """A socket bound at `path`, listening (what a stopped server left there goes first)."""
    path.unlink(missing_ok=True)
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(path))
    listening.listen(2048)
    return listening
