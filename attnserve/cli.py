"""The `attnserve` command, as the field's servers have one (`vllm serve`, `tritonserver`).

    attnserve serve [--port 8000 --model-repository bundles ...]   the server (python -m service)
    attnserve train --corpus PATH_OR_URL --out runs/default        train a model (python -m model)
    attnserve export --checkpoint runs/default/checkpoint.pt ...   a checkpoint to a bundle (python -m export)
    attnserve import --from DIR --name NAME                        a GPT-2 checkpoint in (python -m export.hf_import)
    attnserve bench [--only SECTION]                               the benchmarks (python -m benchmarks)

`serve` takes flags for the settings users change most; each sets the environment variable of the
same name, so every other setting still comes from the environment (or .env), and WORKERS' processes
inherit them all. The other subcommands hand their arguments to their module unchanged: each has its
own --help. train, export, import and bench need the development install (torch; `make test` makes it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# The settings that get a flag, in the order --help lists them; the rest stay environment variables.
SERVE_FLAGS = (
    "host",
    "port",
    "model_repository",
    "model_dir",
    "default_model",
    "model_control_mode",
    "workers",
    "device",
    "max_batch_size",
    "max_batch_delay_ms",
    "api_keys",
    "log_level",
    "log_format",
)
# subcommand -> (the module whose main() runs it, what it does)
DELEGATED = {
    "train": ("model.__main__", "train a model on a corpus and save its checkpoint (python -m model)"),
    "export": ("export.__main__", "export a checkpoint to a verified model bundle (python -m export)"),
    "import": (
        "export.hf_import",
        "import a GPT-2-family transformers checkpoint as a bundle of the repository (python -m export.hf_import)",
    ),
    "bench": ("benchmarks.__main__", "run the benchmarks and write BENCHMARKS.md (python -m benchmarks)"),
}


def parser() -> argparse.ArgumentParser:
    from service.server.settings import Settings

    p = argparse.ArgumentParser(prog="attnserve", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{serve," + ",".join(DELEGATED) + "}")
    serve = sub.add_parser(
        "serve",
        help="serve the model repository over HTTP (python -m service)",
        description="Serve the model repository. Each flag sets the environment variable of the same name; "
        "every other setting is read from the environment as before.",
    )
    for name in SERVE_FLAGS:
        field = Settings.model_fields[name]
        default = "" if field.default is None else field.default
        serve.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.upper(),
            help=f"{field.description} (default: {os.environ.get(name.upper(), default)})",
        )
    for name, (_, what) in DELEGATED.items():
        # Their own parsers read the rest, so their --help is theirs.
        sub.add_parser(name, help=what, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        module, _ = DELEGATED[argv[0]]
        try:
            entry = importlib.import_module(module)
        except ModuleNotFoundError as e:
            print(f"attnserve {argv[0]}: needs the development install ({e.name} is missing): run make test "
                  "or make .venv/.dev", file=sys.stderr)  # fmt: skip
            return 2
        return int(entry.main(argv[1:]) or 0)
    args = parser().parse_args(argv)
    for name in SERVE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            os.environ[name.upper()] = value
    from service.server.main import main as serve

    return serve()
