"""The ``fedsim`` command line: ``run`` and ``validate`` scenario files.

Every problem a user can fix is printed as one line on stderr with exit code 2; no traceback unless
``FEDSIM_DEBUG=1`` is set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedsim import __version__
from fedsim.errors import ConfigError, FedsimError
from fedsim.stopping import RunStopped

if TYPE_CHECKING:
    from fedsim.resume import ResumePoint
    from fedsim.scenario import Scenario

app = typer.Typer(
    name="fedsim",
    help=(
        "Federated learning and differential-privacy simulation on Flower + Ray.\n\n"
        "Scenario files (YAML) describe a run: data and partitioning, population, model, client training, "
        "strategy, engine. See docs/scenarios.md."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ScenarioArg = Annotated[Path, typer.Argument(help="Scenario file (YAML), e.g. scenarios/quickstart.yaml.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Federated learning and differential-privacy simulation on Flower + Ray."""


def with_overrides(
    sc: Scenario, source: str, *, rounds: int | None = None, no_privacy: bool = False
) -> Scenario:
    """The scenario with the command line's overrides applied (validated again, errors naming the option)."""
    from fedsim.scenario import parse_scenario

    data = sc.model_dump(mode="json")
    options = []
    if rounds is not None and sc.strategy.name == "gossip":
        raise ConfigError("--rounds", "left out for a gossip scenario (its length is gossip.ticks)", rounds)
    if rounds is not None:
        data["rounds"], options = rounds, [*options, "--rounds"]
    if no_privacy:
        data["privacy"], data["name"], options = None, f"{sc.name}-no-privacy", [*options, "--no-privacy"]
    return parse_scenario(data, source=f"{source} ({' '.join(options)})") if options else sc


@app.command()
def run(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="Scenario file (YAML), e.g. scenarios/quickstart.yaml (optional with --resume)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Results root folder (default: the scenario's output.dir)."),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Override the scenario's number of rounds.")] = None,
    no_privacy: Annotated[
        bool,
        typer.Option(
            "--no-privacy",
            help="Drop the scenario's privacy block: the non-private baseline of a DP scenario "
            "(results under <name>-no-privacy).",
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue a stopped run (Ctrl-C, SIGTERM, kill -9, a crash) in its results folder from its newest "
            "checkpoint; the result is the same as a run that was never stopped.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display; only the summary line.")
    ] = False,
) -> None:
    """Simulate a scenario; results go to <output.dir>/<name>/<timestamp>/.

    Prints a live progress bar, then one summary line with test_accuracy= and the results folder. Ctrl-C or
    SIGTERM stops at the next safe point with a checkpoint and prints the command that resumes the run.
    """
    from fedsim.run import run_scenario

    if resume is not None:
        point = _resume_point(resume, scenario, output=output, rounds=rounds, no_privacy=no_privacy)
        if point is None:
            return
        sc, source = point.scenario, str(resume / "scenario.yaml")
    elif scenario is None:
        raise ConfigError("SCENARIO", "a scenario file, or --resume RUN_DIR to continue a stopped run")
    else:
        from fedsim.scenario import load_scenario

        point, source = None, str(scenario)
        sc = with_overrides(load_scenario(scenario), source, rounds=rounds, no_privacy=no_privacy)
        if output is not None:  # the scenario's output.dir was checked with the file
            from fedsim.scenario.checks import check_output_root

            try:
                check_output_root(output, sc.name, field="--output")
            except ConfigError as exc:
                raise exc.with_source(source) from None
    try:
        outcome = run_scenario(sc, output_root=output, show_progress=not quiet, resume=point)
    except ConfigError as exc:  # e.g. privacy settings that cannot be accounted: attribute them to the file
        raise (exc if exc.source else exc.with_source(source)) from None
    typer.echo(outcome.summary_line())


def _resume_point(
    run_dir: Path, scenario: Path | None, *, output: Path | None, rounds: int | None, no_privacy: bool
) -> ResumePoint | None:
    """The checkpoint ``--resume`` continues from; None (after saying so) when the run had finished."""
    from fedsim.resume import find_resume_point
    from fedsim.scenario import load_scenario

    for option, given in (("--output", output is not None), ("--rounds", rounds is not None),
                          ("--no-privacy", no_privacy)):  # fmt: skip
        if given:
            raise ConfigError(
                option, "left out with --resume (a run continues under the settings it started with)"
            )
    named = load_scenario(scenario) if scenario is not None else None
    point = find_resume_point(run_dir, scenario=named)
    if point.finished:
        typer.echo(
            f"fedsim: {run_dir} finished at step {point.step}: nothing to resume (its results are there)."
        )
        return None
    return point


def stopped_line(exc: RunStopped) -> str:
    """The one line a stopped run prints: where it stopped and the command that continues it."""
    import shlex

    if exc.checkpoint is None:
        return (
            f"fedsim: stopped by {exc.signal_name} before the first step; nothing to resume (run it again)."
        )
    run_dir = exc.checkpoint.parent.parent
    return (
        f"fedsim: stopped by {exc.signal_name} after step {exc.step}; checkpoint written. "
        f"Resume with: fedsim run --resume {shlex.quote(str(run_dir))}"
    )


@app.command()
def privacy(
    scenario: ScenarioArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for the report (default: <output.dir>/<name>/privacy-<timestamp>/).",
        ),
    ] = None,
) -> None:
    """DP accounting report of a scenario, without training: privacy.json, privacy.md and an ε-per-round plot.

    Prints ε per accountant and the report folder.
    """
    import time

    from fedsim.dp_plan import scenario_plan_and_spend
    from fedsim.privacy.report import NOT_PRIVATE, privacy_record, write_privacy_report
    from fedsim.scenario import load_scenario

    # Client level needs no data: the schema and the choices' arguments are checked (the registries declare them
    # without torch), not the registered names, whose check imports the strategies and optimizers (torch among
    # them, seconds of the command's time); other levels are validated in full (it builds nothing).
    sc = load_scenario(scenario, check_names=False)
    if sc.privacy is None or sc.privacy.level != "client":
        sc = load_scenario(scenario)
    if sc.privacy is None:
        raise ConfigError(
            "privacy", "set in the scenario to get a privacy report (it is null)", None, source=str(scenario)
        )

    def cached_data() -> (
        object
    ):  # the machine's data cache (and torch): only when the sizes need the examples
        from fedsim.engine.setup import build_data

        return build_data(sc)

    try:
        plan, spent = scenario_plan_and_spend(sc, build=cached_data)
    except ConfigError as exc:
        raise exc.with_source(str(scenario)) from None
    folder = output or Path(sc.output.dir) / sc.name / f"privacy-{time.strftime('%Y%m%d-%H%M%S')}"
    record = privacy_record(plan, spent, source="scenario")
    write_privacy_report(folder, record, plan)
    eps = " ".join(f"epsilon_{a}={v:.4f}" for a, v in record["epsilon"].items())
    flag = f" {NOT_PRIVATE}" if record["insecure_seed"] else ""
    typer.echo(
        f"{sc.name}: {eps} delta={plan.config.delta:g} sigma={plan.noise_multiplier:.4g} "
        f"q={plan.mechanism.sample_rate:.4g} rounds={plan.rounds} steps={plan.mechanism.steps}{flag} "
        f"report={folder}"
    )


@app.command()
def compare(
    items: Annotated[
        list[Path],
        typer.Argument(help="Scenario files (run first) or finished run folders, in legend order."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Folder for compare.png and compare.md (default: runs/compare-<time>)."
        ),
    ] = None,
    title: Annotated[str, typer.Option(help="Plot and table title.")] = "",
) -> None:
    """Compare runs against virtual time: test accuracy and loss in one PNG, and a Markdown table.

    A scenario file is run first (results under its output.dir); a run folder is read as it is.
    """
    import time

    from fedsim.compare import check_items, load_run, write_comparison

    check_items(items)
    curves = []
    for item in items:
        if item.is_dir():
            curves.append(load_run(item))
            continue
        from fedsim.run import run_scenario
        from fedsim.scenario import load_scenario

        sc = load_scenario(item)
        try:
            outcome = run_scenario(sc, show_progress=False)
        except ConfigError as exc:
            raise (exc if exc.source else exc.with_source(str(item))) from None
        typer.echo(f"{sc.name}: {outcome.summary_line()}", err=True)
        curves.append(load_run(outcome.path, sc.name))
    out = output or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    files = write_comparison(curves, out, title=title)
    typer.echo(f"compared {len(curves)} runs: plot={files['png']} table={files['md']}")


@app.command()
def validate(
    scenarios: Annotated[list[Path], typer.Argument(help="One or more scenario files to check.")],
    build: Annotated[
        bool,
        typer.Option(
            "--build",
            help="Also make the checks a run makes before it starts: build the data (through the data cache), "
            "the gossip network and the initial model, and plan the privacy accounting (calibrating sigma). Slower.",
        ),
    ] = False,
) -> None:
    """Check scenario files: schema, values, every registered name and its arguments. Exit 2 if any is invalid.

    Builds nothing and writes nothing (no data, model, network or cache) unless --build is given.
    """
    from fedsim.scenario import load_scenario

    bad = 0
    for path in scenarios:
        try:
            sc = load_scenario(path)
            if build:
                from fedsim.engine.preflight import check_before_run

                try:
                    check_before_run(sc)
                    if sc.privacy is not None:  # an unreachable target ε or an unaccountable sampling
                        from functools import partial

                        from fedsim.dp_plan import scenario_plan
                        from fedsim.engine.setup import build_data

                        scenario_plan(sc, build=partial(build_data, sc))
                except ConfigError as exc:
                    raise exc.with_source(str(path)) from None
        except FedsimError as exc:
            typer.echo(f"fedsim: error: {exc}", err=True)
            bad += 1
        else:
            length = (
                f"{sc.gossip_settings.ticks} ticks, {sc.population.clients} nodes"
                if sc.strategy.name == "gossip"
                else f"{sc.rounds} rounds, {sc.population.clients} clients"
            )
            typer.echo(f"{path}: ok ({sc.name}: {length})")
    if bad:
        raise typer.Exit(2)


@app.command()
def deploy(
    scenario: ScenarioArg,
    local: Annotated[
        int | None, typer.Option("--local", help="Start a SuperLink and N SuperNodes on this machine.")
    ] = None,
    superlink: Annotated[
        str | None, typer.Option("--superlink", help="Submit to an existing SuperLink at HOST:PORT.")
    ] = None,
    root_certificates: Annotated[
        Path | None, typer.Option("--root-certificates", help="With --superlink: its CA certificate (PEM).")
    ] = None,
    expect: Annotated[
        int, typer.Option("--expect", help="With --superlink: SuperNodes to wait for (0: until settled).")
    ] = 0,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS and no SuperNode authentication (asked for only).")
    ] = False,
    certs: Annotated[
        Path | None,
        typer.Option(
            "--certs", help="With --local: DIR/ca.pem, server.pem, server.key (default: made anew)."
        ),
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="With --local: the SuperLink's port.")] = None,
    warm_worker: Annotated[
        bool,
        typer.Option(
            "--warm-worker/--no-warm-worker",
            help="With --local: a warm worker daemon per SuperNode (off: each message in a fresh process).",
        ),
    ] = True,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Results root folder.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Override the scenario's number of rounds.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary line.")] = False,
) -> None:
    """Run a scenario on Flower's Deployment Runtime: each SuperNode hosts one logical client (its partition).

    --local N: a real SuperLink and N SuperNodes here, TLS and SuperNode authentication on (certificates and
    keys in the results folder), all stopped at the end. --superlink HOST:PORT: an existing SuperLink whose
    SuperNodes joined already (docs/deployment.md). Prints the same summary line as `fedsim run`.
    """
    from fedsim.scenario import load_scenario

    if (local is None) == (superlink is None):
        raise ConfigError("--local/--superlink", "exactly one of them", None, source=str(scenario))
    sc = with_overrides(load_scenario(scenario), str(scenario), rounds=rounds)
    from fedsim.engine.preflight import check_before_run

    check_before_run(sc)
    if local is not None:
        from fedsim.deploy.local import deploy_local

        outcome = deploy_local(
            sc, nodes=local, insecure=insecure, certs_dir=certs, port=port, output_root=output,
            show_progress=not quiet, warm_worker=warm_worker,
        )  # fmt: skip
    else:
        from fedsim.deploy.submit import deploy_remote

        outcome = deploy_remote(
            sc, superlink=str(superlink), ca_cert=root_certificates, insecure=insecure, expected_workers=expect,
            output_root=output, show_progress=not quiet,
        )  # fmt: skip
    typer.echo(outcome.summary_line())


INTERRUPTED = "fedsim: interrupted; finished rounds are kept in the results folder."


def main() -> None:
    """Console-script entry point: maps user errors to one line and exit code 2."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    debug = os.environ.get("FEDSIM_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)  # click returns (not raises) Exit codes in this mode
        if code == 130:  # typer turns Ctrl-C inside a command into a silent exit code 130
            typer.echo(INTERRUPTED, err=True)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except RunStopped as exc:  # Ctrl-C or SIGTERM answered at a safe point: where, and how to continue
        typer.echo(stopped_line(exc), err=True)
        sys.exit(exc.exit_code)
    except FedsimError as exc:
        if debug:
            raise
        typer.echo(f"fedsim: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors are handled by click itself below
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        if debug:
            raise
        typer.echo(
            f"fedsim: internal error: {type(exc).__name__}: {exc} (set FEDSIM_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
