"""CLI command group `profiles`: `check` (load and validate every profile), `test` (run every example as a
policy test) and `render` (the privacy policy's "third parties we share with" table).

`check` and `test` compile policies with the published example key (gateway.profiles.EXAMPLE_MASTER_KEY):
compiling needs a key, and validating profiles must not need the production master key.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from gateway.profiles import (
    ProfileProblem,
    example_pseudonymiser,
    load_profile_file,
    load_profiles,
    run_profile_examples,
)
from gateway.profiles.loader import profile_files


def _directory(args: argparse.Namespace) -> Path:
    if args.directory is not None:
        return Path(args.directory)
    from gateway.config import load_settings

    return Path(load_settings().profiles_dir)


def _files_or_problem(directory: Path) -> list[Path] | None:
    if not directory.is_dir():
        print(f"{directory}: profile folder does not exist", file=sys.stderr)
        return None
    files = profile_files(directory)
    if not files:
        print(f"{directory}: no *.yaml profiles in the folder", file=sys.stderr)
        return None
    return files


def _print_problems(problems: list[ProfileProblem]) -> None:
    for problem in problems:
        print(str(problem), file=sys.stderr)


def check(args: argparse.Namespace) -> int:
    directory = _directory(args)
    files = _files_or_problem(directory)
    if files is None:
        return 1
    pseudonymiser = example_pseudonymiser()
    failed = routes = 0
    all_problems: list[ProfileProblem] = []
    seen: dict[str, Path] = {}
    for file in files:
        profile, problems = load_profile_file(file, pseudonymiser=pseudonymiser, environ=os.environ)
        if profile is not None and profile.id in seen:
            reason = f"profile id {profile.id!r} is also used by {seen[profile.id]}"
            problems = [ProfileProblem(str(file), None, reason)]
        if problems or profile is None:
            failed += 1
            all_problems.extend(problems)
            print(f"FAIL {file.name}: {len(problems)} problem(s)")
            continue
        seen[profile.id] = file
        routes += len(profile.routes)
        examples = sum(len(route.examples) for route in profile.routes)
        print(f"ok   {profile.id}: {profile.category}, {profile.jurisdiction}, {len(profile.routes)} route(s), "
              f"{examples} example(s)")
    _print_problems(all_problems)
    print(f"{len(files)} profile(s), {routes} route(s): "
          + ("all valid" if not failed else f"{failed} invalid, {len(all_problems)} problem(s)"))
    return 1 if failed else 0


def test(args: argparse.Namespace) -> int:
    directory = _directory(args)
    files = _files_or_problem(directory)
    if files is None:
        return 1
    pseudonymiser = example_pseudonymiser()
    passed = failed = 0
    for file in files:
        profile, problems = load_profile_file(file, pseudonymiser=pseudonymiser, environ=os.environ,
                                              check_examples=False)
        if profile is None:
            failed += 1
            print(f"FAIL {file.name}: the profile does not load")
            _print_problems(problems)
            continue
        for result in run_profile_examples(profile, pseudonymiser):
            label = f"{result.profile_id}/{result.route_id}: {result.name}"
            if result.passed:
                passed += 1
                print(f"PASS {label}")
            else:
                failed += 1
                where = f" ({file}:{result.line})" if result.line else ""
                print(f"FAIL {label}{where}: {result.reason}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


def render(args: argparse.Namespace) -> int:
    directory = _directory(args)
    profile_set = load_profiles(directory, pseudonymiser=example_pseudonymiser())
    # Imported here so `check` and `test` work even while the renderer is being changed.
    render_module = importlib.import_module("gateway.profiles.render")
    text: str = render_module.render_sharing_table(profile_set, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(profile_set.profiles)} partner(s))")
    else:
        sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("profiles", help="check, test and render partner profiles",
                            description="Check, test and render the partner profiles.")
    commands = parser.add_subparsers(dest="profiles_command", metavar="SUBCOMMAND", required=True)
    dir_help = "profile folder (default: GATEWAY_PROFILES_DIR or partner_profiles)"

    check_parser = commands.add_parser("check", help="validate every profile; errors as file:line: reason",
                                       description="Validate every profile (schema, checks, examples). "
                                                   "Exits 1 on any problem.")
    check_parser.add_argument("directory", nargs="?", metavar="DIR", help=dir_help)
    check_parser.set_defaults(handler=check)

    test_parser = commands.add_parser("test", help="run every profile example as a policy test",
                                      description="Run every example; one PASS/FAIL line per example. "
                                                  "Exits 1 on any failure.")
    test_parser.add_argument("directory", nargs="?", metavar="DIR", help=dir_help)
    test_parser.set_defaults(handler=test)

    render_parser = commands.add_parser("render", help="render the 'third parties we share with' table",
                                        description="Render the privacy policy's sharing table from the profiles.")
    render_parser.add_argument("directory", nargs="?", metavar="DIR", help=dir_help)
    render_parser.add_argument("--format", choices=("md", "html"), default="md", help="output format (default md)")
    render_parser.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    render_parser.set_defaults(handler=render)
