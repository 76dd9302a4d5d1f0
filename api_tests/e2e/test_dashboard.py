"""The dashboard at `/` in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright) against the real service: enter the API key, start a job from the form, watch the
loss curve grow while it trains, open the model card and download the model.

It also refreshes the two screenshots the README shows (docs/dashboard-job.png and
docs/dashboard-model.png)."""

from __future__ import annotations

import hashlib
import re

import pytest
from playwright.sync_api import expect, sync_playwright

from api_tests.harness import CHROMIUM, CHROMIUM_ARGS, REPO, upload_dataset, upload_teacher

DOCS = REPO / "docs"
EPOCHS = 60


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.problems = []  # uncaught errors in the page's script fail the test
    page.on("pageerror", lambda exc: page.problems.append(str(exc)))
    yield page
    context.close()


def test_dashboard_start_watch_download(service, files, page, tmp_path):
    with service.client() as c:  # what the pickers offer (uploaded the way a user would, outside the page)
        teacher = upload_teacher(c, files["torchscript"], name="dashboard-teacher")
        dataset = upload_dataset(c, files["csv"], label_column="digit", name="dashboard-digits")

    page.goto(service.base_url + "/")
    expect(page.locator("#key-prompt")).to_be_visible()
    page.fill("#api-key", "kd_" + "n" * 43)
    page.click("#save-key")
    expect(page.locator("#key-error")).to_contain_text("invalid or revoked API key")
    page.fill("#api-key", service.api_key)
    page.click("#save-key")
    expect(page.locator("#jobs-table")).to_be_visible()
    expect(page.locator("#key-prompt")).to_be_hidden()

    page.click("#new-job")
    expect(page.locator("#job-form #start-job")).to_be_visible()
    page.select_option("#teacher", teacher["id"])
    page.select_option("#dataset", dataset["id"])
    page.select_option("#architecture", "mlp")
    page.select_option("#method", "kd")
    expect(page.locator('[name="method.temperature"]')).to_have_value("4")  # the registry's default
    page.fill('[name="student.hidden_sizes"]', "[32]")
    page.fill("#epochs", str(EPOCHS))

    # bad input: the API's 422 is shown with its code, and the field it names is marked
    page.fill('[name="method.alpha"]', "1.5")
    page.click("#start-job")
    expect(page.locator("#form-error")).to_contain_text("invalid_request")
    expect(page.locator("#form-error")).to_contain_text("alpha")
    expect(page.locator('[name="method.alpha"].invalid')).to_be_visible()

    page.fill('[name="method.alpha"]', "0.8")
    page.fill("#learning_rate", "0.005")
    page.click("#start-job")
    page.wait_for_url(re.compile(r"#/jobs/job_[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[-1]

    # Record every point count the loss curve is drawn with: it must grow while the job trains.
    page.evaluate("""() => {
        window.__lossPoints = [];
        const note = () => {
            const p = document.querySelector('#loss-chart path.series[data-series="train_loss"]');
            if (p) window.__lossPoints.push(Number(p.getAttribute('data-points')));
        };
        new MutationObserver(note).observe(document.getElementById('charts'), {childList: true, subtree: true});
        note();
    }""")
    loss = page.locator('#loss-chart path.series[data-series="train_loss"]')
    expect(loss).to_be_visible(timeout=120_000)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=300_000)
    expect(loss).to_have_attribute("data-points", str(EPOCHS))
    expect(page.locator('#loss-chart path.series[data-series="val_loss"]')).to_have_attribute("data-points", str(EPOCHS))
    expect(page.locator('#accuracy-chart path.series[data-series="val_accuracy"]')).to_be_visible()
    expect(page.locator('#accuracy-chart line[data-ref="teacher"]')).to_have_count(1)  # the teacher's reference line
    expect(page.locator("#accuracy-chart")).to_contain_text("teacher accuracy")
    seen = page.evaluate("window.__lossPoints")
    assert seen and min(seen) < EPOCHS and len(set(seen)) >= 2, seen  # drawn live, epoch by epoch
    assert seen == sorted(seen)

    with service.client() as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert job["teacher_id"] == teacher["id"] and job["dataset_id"] == dataset["id"]
    assert job["student"]["params"]["hidden_sizes"] == [32] and job["method"]["params"]["alpha"] == 0.8
    assert job["training"]["epochs"] == EPOCHS and job["training"]["learning_rate"] == 0.005
    expect(page.locator("#events li").first).to_be_visible()
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "dashboard-job.png"), full_page=True)

    # the jobs table shows it
    page.click('nav a[data-nav="jobs"]')
    expect(page.locator(f'#jobs-table tr[data-job="{job_id}"] .badge')).to_have_text("succeeded")
    page.click(f'#jobs-table a[href="#/jobs/{job_id}"]')

    # the model card: charts of accuracy, size and latency per artifact, and a download
    page.click("#model-link")
    card = _card(service, job["model_id"])
    expect(page.locator("#model-card")).to_contain_text("× fewer parameters")
    for chart in ("#accuracy-bars", "#size-bars", "#latency-bars"):
        expect(page.locator(f"{chart} rect.bar")).to_have_count(len(card["artifacts"]))
    page.screenshot(path=str(DOCS / "dashboard-model.png"), full_page=True)

    fp32 = next(a for a in card["artifacts"] if a["precision"] == "fp32")
    with page.expect_download() as info:
        page.click('button.download[data-precision="fp32"]')
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert info.value.suggested_filename == f"{card['name']}.fp32.onnx"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == fp32["sha256"]
    expect(page.locator('button.download[data-precision="fp32"]')).to_have_text("Downloaded ✓ sha256")
    assert not page.problems, page.problems


def test_dashboard_search_page_draws_the_files_as_trials_finish(service, files, page):
    """A search's page: the scatter of its files (score against latency) fills in while the trials
    run, ends with the Pareto front and the recommendation marked; the searches table lists it."""
    with service.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["torchscript"], name="dashboard-search-teacher")["id"],
               "dataset_id": upload_dataset(c, files["npz"], name="dashboard-search-digits")["id"]}
        search = c.post("/v1/searches", json={
            **ids, "targets": {"latency_ms": 50.0, "min_accuracy": 0.5},
            "space": {"methods": ["kd"], "students": [{"architecture": "mlp", "params": {"hidden_sizes": [16]}}],
                      "epochs": 25, "precisions": ["fp32", "int8"]},
            "budget": {"trials": 3, "parallel": 1}}).json()
    page.goto(service.base_url + f"/#/searches/{search['id']}")
    page.fill("#api-key", service.api_key)
    page.click("#save-key")
    expect(page.locator("#search-status")).to_be_visible()
    # while it runs: the first trial's files appear before the last trial has ended
    expect(page.locator("#pareto-chart circle[data-trial]").first).to_be_visible(timeout=120_000)
    seen_while_running = page.locator("#search-status").inner_text()
    expect(page.locator("#search-status")).to_have_text("succeeded", timeout=180_000)
    with service.client() as c:
        final = c.get(f"/v1/searches/{search['id']}").json()
        trials = c.get(f"/v1/searches/{search['id']}/trials").json()["data"]
    files_ = [x for t in trials for x in t["candidates"]]
    expect(page.locator("#pareto-chart circle[data-trial]")).to_have_count(len(files_))
    expect(page.locator("#pareto-chart circle[data-front]")).to_have_count(len(final["result"]["pareto"]))
    expect(page.locator("#recommended-dot")).to_have_count(1)
    expect(page.locator('#pareto-chart line[data-target="latency_ms"]')).to_have_count(1)
    expect(page.locator("#trials-table tbody tr")).to_have_count(3)
    rec = final["result"]["recommended"]
    expect(page.locator("#recommended")).to_contain_text(f"trial {rec['trial']} {rec['precision']}")
    expect(page.locator("#recommended-link")).to_have_attribute("href", f"#/models/{rec['model_id']}")
    page.screenshot(path=str(DOCS / "dashboard-search.png"), full_page=True)
    page.click('nav a[data-nav="searches"]')
    expect(page.locator(f'#searches-table tr[data-search="{search["id"]}"] .badge')).to_have_text("succeeded")
    print(f"status when the first file was drawn: {seen_while_running}")
    assert seen_while_running in ("running", "succeeded") and not page.problems, page.problems


def _card(service, model_id: str) -> dict:
    with service.client() as c:
        return c.get(f"/v1/models/{model_id}").json()


def test_dashboard_files_are_served_without_a_key(service):
    """The page itself is public (it asks for the key); everything it shows comes through /v1."""
    import httpx

    index = httpx.get(service.base_url + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="(/web/[^"]+)"', index.text):
        assert httpx.get(service.base_url + asset).status_code == 200, asset
    assert httpx.get(service.base_url + "/web/missing.js").status_code == 404
    assert httpx.get(service.base_url + "/v1/jobs").status_code == 401
