"""The app in a real browser: `streamlit run app` on a free port, headless Chromium (Debian's
chromium driven by Playwright) through every page. Each page must render its main Plotly chart and
show no exception; a screenshot of each lands in tests/artifacts/.

Skipped only when no Chromium binary is found (`.ci/run` installs one)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from _serving import free_port, stop_server, wait_healthy

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# url path -> (page title, the key of its main chart)
PAGES = {
    "": ("Runs", "loss_chart"),
    "heads": ("Heads", "ablation_heatmap"),
    "attention": ("Attention", "entropy"),
    "memorization": ("Memorization", "memorization"),
    "repetition": ("Repetition", "seq_rep"),
    "induction": ("Induction", "induction_overview"),
    "compare": ("Compare runs", "compare_loss"),
}


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def needs_chromium() -> str:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("No Chromium found (looked for /usr/bin/chromium and chromium on PATH): "
                    "install it with `apt-get install -y chromium` or run .ci/run.")
    return chromium


@contextlib.contextmanager
def serving(root: Path, log: Path | None = None, **env: str) -> Iterator[str]:
    """`streamlit run app` on the runs folder `root` (and `env`), its output in `log` when given;
    yields its URL once it answers, and stops it afterwards."""
    port = free_port()
    env = dict(os.environ, WORKBENCH_RUNS=str(root), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env)
    out = open(log, "w") if log is not None else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, output=(lambda: log.read_text()) if log is not None else None)
        yield url
    finally:
        stop_server(proc)
        if log is not None:
            out.close()


@pytest.fixture(scope="module")
def server(request):
    chromium = needs_chromium()
    root = request.getfixturevalue("app_roots")["computed"]  # only once Chromium is known to be there
    log = request.getfixturevalue("tmp_path_factory").mktemp("server") / "server.log"  # a pipe nobody reads fills
    with serving(root, log) as url:
        yield url, chromium


def form_is_refused_as_the_cli_refuses(page, fields, argv: list[str]) -> None:
    """On the New-run page: name the run formrun, fill `fields` ((label, value) pairs), press Start
    training; the error shown is, word for word, what `python -m train ARGV` says on refusing."""
    from train import main as train_main
    page.get_by_label("Run name (a folder in the runs folder)").fill("formrun")
    for label, value in fields:
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Start training").click()
    error = page.locator("[data-testid='stAlertContentError']")
    error.first.wait_for(timeout=60_000)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert train_main(argv) == 2
    assert error.first.inner_text().strip() == err.getvalue().strip()


def wait_until_idle(page, timeout_ms: int = 60_000) -> None:
    """Streamlit shows a status widget while the script runs; wait for it to go away."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout_ms)


def test_every_page_renders_its_main_chart_in_chromium(server):
    from playwright.sync_api import sync_playwright

    url, chromium = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            for path, (title, chart_key) in PAGES.items():
                page.goto(f"{url}/{path}", wait_until="domcontentloaded")
                page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
                main_chart = page.locator(f".st-key-{chart_key} .js-plotly-plot")
                main_chart.first.wait_for(state="visible", timeout=60_000)
                wait_until_idle(page)
                page.wait_for_timeout(500)
                name = path or "runs"
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
                body = page.inner_text("body")
                assert page.locator("[data-testid='stException']").count() == 0, f"{name}: exception shown"
                assert "Traceback" not in body, f"{name}: a traceback is shown"
                assert page.locator("[data-testid='stAlertContentError']").count() == 0, \
                    f"{name}: error shown: {body[:2000]}"
                # the chart really drew: plotly put an SVG with data traces inside it
                assert main_chart.first.locator(".main-svg").count() > 0, f"{name}: main chart has no SVG"
                assert page.locator(".js-plotly-plot").count() >= 1
            # the Prompt page: Compute follows the essay's prompt through every checkpoint
            page.goto(f"{url}/prompt", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Prompt").first.wait_for(timeout=60_000)
            wait_until_idle(page)
            page.get_by_role("button", name="Compute").click()
            page.locator(".st-key-prompt_lens .js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=60_000)
            wait_until_idle(page)
            page.screenshot(path=str(ARTIFACTS / "prompt-page.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0, "prompt: exception shown"
            assert page.locator("[data-testid='stAlertContentError']").count() == 0, page.inner_text("body")[:2000]
            # the Circuits page: the role map and the animated composition graph draw
            page.goto(f"{url}/circuits", wait_until="domcontentloaded")
            for key in ("role_map", "composition_graph"):
                page.locator(f".st-key-{key} .js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=60_000)
            wait_until_idle(page)
            page.screenshot(path=str(ARTIFACTS / "circuits-page.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0, "circuits: exception shown"
            assert page.locator("[data-testid='stAlertContentError']").count() == 0, page.inner_text("body")[:2000]
        finally:
            browser.close()


def test_interactive_mean_ablation_in_chromium(server):
    """Pick a head and the mean kind on the Heads page as a user would: the loss with ablation
    changes, both generations are shown, and no error appears."""
    from playwright.sync_api import sync_playwright

    url, chromium = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(f"{url}/heads", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Interactive ablation").wait_for(timeout=60_000)
            wait_until_idle(page)
            page.locator(".st-key-interactive_kind").get_by_text("mean", exact=True).click()
            wait_until_idle(page)
            page.locator(".st-key-ablate_heads input").click()
            page.keyboard.type("L1H2")
            page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            page.get_by_text("With L1H2 mean-ablated").wait_for(timeout=60_000)
            wait_until_idle(page)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "heads-mean-ablation.png"), full_page=True)
            body = page.inner_text("body")
            assert page.locator("[data-testid='stException']").count() == 0
            assert page.locator("[data-testid='stAlertContentError']").count() == 0, body[:2000]
            metrics = page.locator("[data-testid='stMetric']")
            values = {metrics.nth(i).locator("[data-testid='stMetricLabel']").inner_text().strip():
                      metrics.nth(i).locator("[data-testid='stMetricValue']").inner_text().strip()
                      for i in range(metrics.count())}
            assert values["Heads ablated"] == "1", values
            assert values["Loss with ablation"] != values["Clean held-out loss"], values
        finally:
            browser.close()


@pytest.mark.stress
def test_four_browser_sessions_at_once_keep_their_own_numbers(server, app_roots):
    """Four real browser sessions on one server at once (separate browser contexts): two ablate
    different heads with different kinds on the Heads page while two others show it clean; all
    actions are sent before any page is waited for. Every page ends without an error and shows the
    loss the probes compute for its own heads alone."""
    from playwright.sync_api import sync_playwright

    import probes
    from store.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, step_of

    url, chromium = server
    run = app_roots["computed"] / "small"
    step = max(step_of(p) for p in list_checkpoints(run))
    plan = [(["L0H1"], "mean"), ([], "zero"), (["L1H2"], "resample"), ([], "zero")]
    tokens = probes.heldout_tokens(run, n=16)
    model, _ = load_checkpoint(checkpoint_dir(run, step))
    want = [f"{probes.ablate(model, tokens, [(int(h[1]), int(h[3])) for h in heads], kind)['loss']:.4f}"
            for heads, kind in plan]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            pages = [browser.new_context(viewport={"width": 1400, "height": 2000}).new_page() for _ in plan]
            for page in pages:
                page.goto(f"{url}/heads", wait_until="commit")
            for page in pages:
                page.get_by_role("heading", name="Interactive ablation").wait_for(timeout=90_000)
            for page, (heads, kind) in zip(pages, plan):  # every session acts before any is waited for
                page.locator(".st-key-interactive_kind").get_by_text(kind, exact=True).click()
                for label in heads:
                    page.locator(".st-key-ablate_heads input").click()
                    page.keyboard.type(label)
                    page.keyboard.press("Enter")
                    page.keyboard.press("Escape")
            for page, (heads, kind), loss in zip(pages, plan, want):
                if heads:
                    page.get_by_text(f"With {', '.join(heads)} {kind}-ablated").wait_for(timeout=90_000)
                wait_until_idle(page, 90_000)
                assert page.locator("[data-testid='stException']").count() == 0
                assert page.locator("[data-testid='stAlertContentError']").count() == 0, page.inner_text("body")[:2000]
                metric = page.locator("[data-testid='stMetric']").filter(has_text="Loss with ablation")
                assert metric.locator("[data-testid='stMetricValue']").inner_text().strip() == loss, (heads, kind)
        finally:
            browser.close()


def test_llc_button_and_new_run_form_in_chromium(app_roots, tmp_path):
    """The app offers what the command line offers, clicked in a browser: on the smallest trained
    run the Stages page's button computes the LLC at the one checkpoint chosen and draws it; the
    New-run form shows the preset's sizes, refuses a bad burstiness with the command line's own
    sentence, and starts a run with the stories' knobs and a held-out file, which run.json records."""
    from playwright.sync_api import expect, sync_playwright

    from app import launch
    from store.runrecord import read_record, record_or_none
    from probes.measure.results import read_results
    from train import main as train_main
    from test_live import wait_for

    chromium = needs_chromium()
    root, data = tmp_path / "runs", tmp_path / "texts"
    shutil.copytree(app_roots["computed"] / "small", root / "small")
    data.mkdir()
    (data / "held.txt").write_text("A dog ran to the park and played with a red ball.\n\n" * 400)
    steps = sorted(read_results(root / "small"))
    form_run = root / "formrun"
    with serving(root, tmp_path / "server.log", WORKBENCH_DATA=str(data)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(f"{url}/stages", wait_until="domcontentloaded")
            page.get_by_text("No checkpoint of this run has an LLC estimate yet").wait_for(timeout=60_000)
            wait_until_idle(page)
            page.locator(".st-key-llc_steps [aria-label='Clear all']").click()
            wait_until_idle(page)
            page.locator(".st-key-llc_steps input").click()
            page.get_by_role("option", name=str(steps[0]), exact=True).click()
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Compute the LLC at 1 checkpoint").click()
            page.locator(".st-key-stages .js-plotly-plot").first.wait_for(state="visible", timeout=120_000)
            page.get_by_text(f"1 of {len(steps)} checkpoints have an LLC estimate").wait_for(timeout=30_000)
            assert [s for s, r in read_results(root / "small").items() if "llc" in r] == [steps[0]]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "stages-llc.png"), full_page=True)

            page.goto(f"{url}/new_run", wait_until="domcontentloaded")
            page.get_by_role("heading", name="New run").wait_for(timeout=60_000)
            wait_until_idle(page)
            for label, value in (("Layers", "4"), ("Heads", "4"), ("Width", "128"), ("Context", "128")):
                expect(page.get_by_label(label, exact=True)).to_have_value(value)  # the nano preset's sizes, not 0
            form_is_refused_as_the_cli_refuses(
                page, (("Layers", "1"), ("Heads", "2"), ("Width", "32"), ("Context", "32"), ("Steps", "2"),
                       ("Burstiness", "1.5"), ("Story episodes", "2"), ("Corpus (MB)", "0.1")),
                ["--preset", "nano", "--data", "stories", "--burstiness", "1.5", "--out", str(form_run)])
            page.get_by_label("Burstiness", exact=True).fill("1")
            page.locator(".st-key-new_val_file").click()
            page.get_by_role("option", name="held.txt").click()
            page.get_by_role("button", name="Start training").click()
            page.get_by_text("is training in the background").wait_for(timeout=60_000)
        finally:
            browser.close()
    try:
        record = wait_for(lambda: record_or_none(form_run), 60)
        train = record["train"]
        assert (train["burstiness"], train["story_episodes"], train["n_layer"], train["n_ctx"]) == (1.0, 2, 1, 32)
        assert train["val_data"] == f"text:{(data / 'held.txt').resolve()}" and read_record(form_run)["model"]["n_embd"] == 32
    finally:
        launch.stop_background(form_run)
        wait_for(lambda: launch.supervisor_of(form_run.resolve()) is None, 60)
