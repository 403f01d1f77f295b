"""`hybridsim` console script: `hybridsim <command> key=value ...` (Hydra-style overrides)."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "run": "simulate one episode of a scenario and write a run folder",
    "batch": "generate many episodes into a LeRobot v3.0 dataset (resumable; launcher=ray; merge)",
    "bench": "measure render / refiner / physics speed side by side and write a report",
    "train-refiner": "make paired clips from randomised scenes and train the refiner (resumable)",
    "eval-refiner": "refined vs coarse quality (PSNR, SSIM, temporal stability) on held-out scenarios",
    "export": "export a dataset's labels: coco dataset=DIR (instance masks and boxes, pycocotools-loadable)",
    "scenarios": "list the scenarios shipped in the package",
    "show-config": "print the composed, validated config for the given overrides",
    "replay": "rerun a recorded interactive session: replay FILE [out_dir=DIR] (bit-identical, checked)",
    "view": "live viewer in the browser: view scenario=NAME [port=8080] (viser; SSH port forwarding)",
}


# commands whose key=value options are a flat dict of typed defaults (listed by --help)
OPTION_MODULES = {"bench": "hybridsim.bench", "replay": "hybridsim.interactive.replay",
                  "view": "hybridsim.interactive.viewer", "train-refiner": "hybridsim.training.train_refiner",
                  "eval-refiner": "hybridsim.training.refine_eval"}


def _options_epilog(command: str) -> str:
    """`key=default` for every option of a command (imported only when help is asked for)."""
    import importlib

    if command not in OPTION_MODULES:
        return ("options are the run config's keys (Hydra-style overrides); "
                "see them with: hybridsim show-config")
    defaults = importlib.import_module(OPTION_MODULES[command]).DEFAULTS
    width = max(len(k) for k in defaults)
    def shown(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)

    lines = [f"  {k:<{width}} = {shown(v)}" for k, v in defaults.items()]
    return "key=value options (defaults shown):\n" + "\n".join(lines)


def _parser(with_options: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridsim",
        description="Hybrid physics + Gaussian-splat + causal video-diffusion simulator.",
        epilog="examples:\n  hybridsim run\n  hybridsim run scenario=stack_topple n_envs=2 scenario.seed=3\n"
        "  hybridsim bench out=bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        epilog = _options_epilog(name) if with_options and name not in ("scenarios",) else None
        sp = sub.add_parser(name, help=text, description=text, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(with_options=any(a in ("-h", "--help") for a in argv)).parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    from hybridsim.scenario.spec import SpecError

    try:
        return _dispatch(args.command, args.overrides)
    except SpecError as exc:  # bad input: one line (never a file's content), exit 2
        print(f"hybridsim: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hybridsim: interrupted; finished frames were kept", file=sys.stderr)
        return 130
    except Exception as exc:  # a stage error: one clear line, details with HYBRIDSIM_DEBUG=1
        import os

        if os.environ.get("HYBRIDSIM_DEBUG"):
            raise
        name = type(exc).__name__
        if name in ("PhysicsError", "RenderError", "RefineError", "DatasetError", "DataError", "InteractiveError") or \
                isinstance(exc, OSError):  # OSError: a disk that filled up, a folder that vanished
            print(f"hybridsim: {name}: {_one_line(exc)}", file=sys.stderr)
            return 1
        raise


def _one_line(exc: Exception, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _dispatch(command: str, overrides: list[str]) -> int:
    if command == "run":
        from hybridsim.output.runner import run

        result = run(overrides=overrides) if not any(o.startswith("scenario=") for o in overrides) else run(
            _pop_scenario(overrides), [o for o in overrides if not o.startswith("scenario=")])
        print(f"wrote {result.n_frames} frames x {result.n_envs} env(s) to {result.out_dir} "
              f"({result.timings.get('frames_per_s', 0):.2f} frames/s)")
        return 0
    if command == "scenarios":
        from hybridsim.config import compose, scenario_names

        for name in scenario_names():
            print(f"{name:20s} {compose([f'scenario={name}']).scenario.description}")
        return 0
    if command == "show-config":
        from omegaconf import OmegaConf

        from hybridsim.config import compose

        print(OmegaConf.to_yaml(OmegaConf.create(compose(overrides).to_dict())))
        return 0
    if command == "train-refiner":
        from hybridsim.training.train_refiner import main as train_main

        return train_main(overrides)
    if command == "eval-refiner":
        from hybridsim.training.refine_eval import main as eval_main

        return eval_main(overrides)
    if command == "batch":
        from hybridsim.output.batch import main as batch_main

        return batch_main(overrides)
    if command == "export":
        from hybridsim.output.coco import main as export_main

        return export_main(overrides)
    if command == "bench":
        from hybridsim.bench import main as bench_main

        return bench_main(overrides)
    if command == "replay":
        from hybridsim.interactive.replay import main as replay_main

        return replay_main(overrides)
    if command == "view":
        from hybridsim.interactive.viewer import main as view_main

        return view_main(overrides)
    raise AssertionError(command)


def _pop_scenario(overrides: list[str]) -> str:
    return [o for o in overrides if o.startswith("scenario=")][-1].split("=", 1)[1]


if __name__ == "__main__":
    sys.exit(main())
