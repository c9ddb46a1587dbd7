"""The README's `make ui` over a store holding a real training run: the MLflow server's REST API serves
the run's parameters, loss history and images, and a real headless browser renders the run's page.

The run comes from the real stages (`dvc repro generate` in a tiny project repository: download,
preprocess, train, generate), logged to the repository's own sqlite store.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from project_repo import FID_DURING_TRAINING, PROJECT, ProjectRepo, make_project_repo
from servers import free_port, log_tail, start_in_session, stop_group, wait_for_http

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright drives it instead of its own download
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
SERVER_START_S = 180  # `mlflow ui` starts uvicorn workers and job runners: slow on a busy 2-core machine
PAGE_TIMEOUT_MS = 90_000

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class UiServer:
    base_url: str
    link: str  # the one `make ui` prints

    def api(self, endpoint: str, **query: str) -> dict:
        response = requests.get(f"{self.base_url}/api/2.0/mlflow/{endpoint}", params=query, timeout=30)
        assert response.status_code == 200, f"{endpoint} {query}: {response.status_code} {response.text[:500]}"
        return response.json()

    def artifact_bytes(self, run_id: str, path: str) -> bytes:
        """An artifact's bytes through the server's artifact endpoint (what the UI's image views fetch)."""
        response = requests.get(f"{self.base_url}/get-artifact", params={"path": path, "run_uuid": run_id},
                                timeout=30)
        assert response.status_code == 200, f"get-artifact {path}: {response.status_code} {response.text[:300]}"
        return response.content


@pytest.fixture(scope="module")
def trained_repo(tmp_path_factory: pytest.TempPathFactory) -> ProjectRepo:
    """A tiny project whose download, preprocess, train and generate stages ran, logging to its store."""
    repo = make_project_repo(tmp_path_factory.mktemp("ui") / "repo", **FID_DURING_TRAINING)
    repo.dvc("repro", "generate")
    return repo


@pytest.fixture(scope="module")
def ui_server(trained_repo: ProjectRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    """`make ui` from the project root on a free port over the trained repository's store."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui-server") / "make-ui.log"
    # -o .venv/.installed: use the environment as it is; a test must never reinstall it
    command = ["make", "-C", str(PROJECT), "-o", ".venv/.installed", "ui", f"UI_PORT={port}",
               f"MLFLOW_STORE={trained_repo.tracking_uri}"]
    process = start_in_session(command, PROJECT, trained_repo.env, log_path)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/health", SERVER_START_S, process, log_path)
        link = re.search(r"^MLflow UI: (\S+)$", log_path.read_text(), re.MULTILINE)
        assert link, f"make ui printed no link:\n{log_tail(log_path)}"
        yield UiServer(base_url, link[1])
    finally:
        survivors = stop_group(process)
        assert not survivors, f"processes of `make ui` that ignored SIGTERM: {survivors}\n{log_tail(log_path)}"
        # no GenAI job runner: with it, `make ui`'s processes outlived SIGTERM by 30 s on a busy 2-core machine
        assert "mlflow.server.jobs" not in log_path.read_text(), log_tail(log_path)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after the stop"


def training_run_id(repo: ProjectRepo) -> str:
    return repo.json("metrics/train.json")["mlflow_run_id"]


def test_the_rest_api_serves_the_runs_parameters_and_loss_history(trained_repo: ProjectRepo,
                                                                   ui_server: UiServer) -> None:
    run_id = training_run_id(trained_repo)
    run = ui_server.api("runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {param["key"]: param["value"] for param in run["data"]["params"]}
    tiny = trained_repo.params()
    for key in ("steps", "batch_size", "nz", "lr", "log_every"):
        assert params[key] == str(tiny[key]), key
    assert params["data.image_size"] == str(tiny["data"]["image_size"])
    assert params["runtime.device"] == "cpu"

    history = ui_server.api("metrics/get-history", run_id=run_id, metric_key="loss_g")["metrics"]
    with open(trained_repo.root / "metrics/losses.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    # the same curve in MLflow as in the DVC plot file: one point per logging interval
    assert [point["step"] for point in history] == [int(row["step"]) for row in csv_rows]
    assert [point["step"] for point in history] == list(range(tiny["log_every"], tiny["steps"] + 1, tiny["log_every"]))
    np.testing.assert_allclose([point["value"] for point in history], [float(row["loss_g"]) for row in csv_rows],
                               atol=1e-5)


def test_the_rest_api_serves_progress_grids_samples_and_models(trained_repo: ProjectRepo, ui_server: UiServer) -> None:
    run_id = training_run_id(trained_repo)
    top = {entry["path"] for entry in ui_server.api("artifacts/list", run_id=run_id)["files"]}
    assert {"images", "samples", "models", "metrics", "model_summary.txt"} <= top

    models = {entry["path"] for entry in ui_server.api("artifacts/list", run_id=run_id, path="models")["files"]}
    assert {"models/generator.pt", "models/generator_ema.pt", "models/discriminator.pt"} <= models

    samples = {entry["path"] for entry in ui_server.api("artifacts/list", run_id=run_id, path="samples")["files"]}
    assert {"samples/grid.png", "samples/interpolation.png", "samples/progress_sheet.png",
            "samples/progress.gif"} <= samples
    served_grid = ui_server.artifact_bytes(run_id, "samples/grid.png")
    assert served_grid == (trained_repo.root / "samples/grid.png").read_bytes()

    # progress grids logged with log_image: the UI's Images slider shows them by step
    tiny = trained_repo.params()
    images = [entry["path"] for entry in ui_server.api("artifacts/list", run_id=run_id, path="images")["files"]]
    progress_pngs = {int(path.split("+step+")[1].split("+")[0]): path for path in images
                     if path.startswith("images/progress+step+") and path.endswith(".png")}
    assert sorted(progress_pngs) == list(range(0, tiny["steps"] + 1, tiny["sample_every"]))  # step 0 included
    last = tiny["steps"]
    served = Image.open(io.BytesIO(ui_server.artifact_bytes(run_id, progress_pngs[last])))
    assert served.format == "PNG"
    on_disk = Image.open(trained_repo.root / f"progress/step_{last:06d}.png")
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(on_disk.convert("RGB")))


def browser_or_skip():
    """Playwright's sync API and Debian's chromium, or a skip saying which is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    return sync_playwright


def assert_real_screenshot(path: Path) -> None:
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.size == (VIEWPORT["width"], VIEWPORT["height"])
    pixels = np.asarray(image.convert("RGB"))                                   # (H, W, 3)
    n_colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    # a blank or error page has a handful of colours; a rendered run page has text, icons and charts
    assert n_colours > 100 and pixels.std() > 10, f"{path} looks blank ({n_colours} colours)"


def keep_screenshot(path: Path) -> None:
    target_dir = os.environ.get("ANIME_DCGAN_ARTIFACTS")
    if target_dir:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target_dir) / path.name)


def test_a_headless_browser_renders_the_runs_page(trained_repo: ProjectRepo, ui_server: UiServer,
                                                  tmp_path: Path) -> None:
    """The run's overview (name, parameters), its loss_g chart and its sample grid, as a user sees them."""
    sync_playwright = browser_or_skip()
    run_id = training_run_id(trained_repo)
    info = ui_server.api("runs/get", run_id=run_id)["run"]["info"]
    grid_width, grid_height = Image.open(trained_repo.root / "samples/grid.png").size
    shots = {name: tmp_path / f"mlflow-run-{name}.png" for name in ("runs", "overview", "loss-chart", "sample-grid")}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            # the link `make ui` prints: the experiment's runs in the model-training view, not GenAI's traces
            page.goto(ui_server.link)
            page.get_by_text(info["run_name"]).first.wait_for()
            assert "workflowType=machine_learning" in page.url
            page.get_by_text(re.compile(r"^synthetic \(")).first.wait_for()  # the Dataset column: name (digest)
            page.screenshot(path=shots["runs"])
            page.goto(f"{ui_server.base_url}/#/experiments/{info['experiment_id']}/runs/{run_id}")
            page.get_by_text(info["run_name"]).first.wait_for()
            page.get_by_text("checkpoint_every").first.wait_for()  # a parameter, in the overview's table
            page.screenshot(path=shots["overview"])

            page.get_by_text("Model metrics", exact=True).first.click()
            page.get_by_placeholder("Search metric charts").fill("loss_g")
            page.locator(".js-plotly-plot").first.wait_for()  # the chart is drawn, not only its frame
            page.screenshot(path=shots["loss-chart"])

            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_text("samples", exact=True).first.click()
            page.get_by_text("grid.png", exact=True).first.click()
            # the preview has fetched and decoded the artifact: an image of grid.png's own size
            page.wait_for_function(
                "([w, h]) => Array.from(document.images).some(i => i.complete && i.naturalWidth === w "
                "&& i.naturalHeight === h)", arg=[grid_width, grid_height])
            page.screenshot(path=shots["sample-grid"])
        finally:
            browser.close()

    for shot in shots.values():
        keep_screenshot(shot)
        assert_real_screenshot(shot)


def test_make_ui_prints_the_link_to_the_experiments_runs_in_the_model_training_view(trained_repo: ProjectRepo, ui_server: UiServer) -> None:
    experiment = ui_server.api("experiments/get-by-name", experiment_name="anime-dcgan")["experiment"]
    assert ui_server.link == (f"{ui_server.base_url}/#/experiments/{experiment['experiment_id']}/runs"
                              "?workflowType=machine_learning")


def test_dvc_plots_draw_their_loss_curves_with_the_network_off(reproduced_repo: ProjectRepo, tmp_path: Path) -> None:
    """The page of `dvc plots show` (the template `make install` writes) in a browser that is offline."""
    sync_playwright = browser_or_skip()
    template = PROJECT / ".dvc/plots/offline.html"
    if "vegaEmbed" not in template.read_text():
        pytest.skip(f"{template} holds no inlined vega: make install could not reach the npm registry")
    reproduced_repo.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    page_file = tmp_path / "plots/index.html"
    assert "cdn.jsdelivr" not in page_file.read_text()
    shot = tmp_path / "dvc-plots-offline.png"
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True, viewport=VIEWPORT)
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_file.as_uri())
            # the line plots of dvc.yaml (losses, discriminator outputs, FID by step) drawn by vega into canvases
            page.wait_for_function("document.querySelectorAll('.vega-embed canvas').length >= 3",
                                   timeout=PAGE_TIMEOUT_MS)
            drawn = page.evaluate("""() => Array.from(document.querySelectorAll('.vega-embed canvas')).map(c => {
                const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let inked = 0;
                for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
                return inked; })""")
            page.screenshot(path=shot, full_page=False)
        finally:
            browser.close()
    keep_screenshot(shot)
    assert all(inked > 1000 for inked in drawn), f"a chart is blank: inked pixels per canvas {drawn}"
    assert not [url for url in requested if url.startswith(("http://", "https://"))], requested
