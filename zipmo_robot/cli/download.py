"""`zipmo-robot download [NAME ...|--all] [--cache DIR] [--list]`: fetch released ZipMo files into the cache."""

from __future__ import annotations

import argparse

HELP = "download released ZipMo checkpoints (CompVis/ZipMo on the huggingface hub) into the local cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="released files to fetch (see --list); aliases: atm, tramoe_<suite>, file names",
    )
    parser.add_argument(
        "--all", action="store_true", help="fetch every released file (10 files, ~35 GB if stored in fp32)"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="huggingface-style cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the released files and where each one is cached"
    )


def _list(cache: str | None) -> int:
    from pathlib import Path

    from zipmo_robot.checkpoints import hub

    cache_dir = Path(cache).expanduser() if cache else hub.hf_cache_dir()
    print(f"repo {hub.REPO_ID}; drop folder {hub.local_drop_dir()}; huggingface cache {cache_dir}")
    for f in hub.RELEASED.values():
        drop = hub.local_drop_dir() / f.basename
        where = str(drop) if drop.is_file() else hub._cached_hf_file(f, cache_dir)
        status = f"cached at {where}" if where else "not downloaded"
        print(f"  {f.name:<22} {f.filename:<46} {f.n_tensors:>5} tensors  {f.numel / 1e6:7.1f} M  {status}")
        print(f"  {'':<22} {f.description}")
    from zipmo_robot.checkpoints.loader import bundled_names

    bundled = ", ".join(bundled_names()) or "none ship with this version"
    print(f"bundled trained checkpoints (--checkpoint bundled:NAME, no download): {bundled}")
    return 0


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from zipmo_robot.checkpoints import hub
    from zipmo_robot.errors import UserError

    if overrides:
        raise UserError(f"download takes no key=value overrides, got {overrides}")
    if args.list:
        return _list(args.cache)
    names = list(hub.RELEASED) if args.all else list(args.names)
    if not names:
        raise UserError("name at least one released file (see `zipmo-robot download --list`) or pass --all")
    files = [hub.released_file(n) for n in names]  # validate every name before the first download
    for f in files:
        path = hub.download(f.name, cache_dir=args.cache)
        print(f"{f.name}: {path}")
    return 0
