"""The dashboard at `/` in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright) against the real service: enter the API key, start a job from the form, watch the
loss curve grow while it trains, open the model card and download the model, clone the job;
upload a dataset from the page, see the pickers offer only pairs that go together, see a failed
job's reason in the jobs list; and no two controls of the forms overlap on a phone, a laptop or a
wide screen.

It also refreshes the screenshots the README shows (docs/dashboard-*.png)."""

from __future__ import annotations

import hashlib
import re

import pytest
from playwright.sync_api import expect, sync_playwright

from api_tests.harness import CHROMIUM, CHROMIUM_ARGS, REPO, upload_dataset, upload_teacher

DOCS = REPO / "docs"
EPOCHS = 60
WIDTHS = (390, 1280, 1920)  # a phone, a laptop, a wide screen

# Every visible form control's box; the pairs of them that intersect, and those reaching out of
# the viewport (and how wide the page is: nothing may make it scroll sideways).
LAYOUT = """() => {
  const name = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.name ? `[name=${e.name}]` : "");
  const boxes = [...document.querySelectorAll("input, select, textarea, button")].map((e) => {
    const r = e.getBoundingClientRect();
    return {name: name(e), l: r.left, r: r.right, t: r.top, b: r.bottom, shown: r.width > 0 && r.height > 0 &&
            e.checkVisibility({visibilityProperty: true})};  // false inside a closed <details>
  }).filter((b) => b.shown);
  const overlaps = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
    if (a.l < b.r - 0.5 && b.l < a.r - 0.5 && a.t < b.b - 0.5 && b.t < a.b - 0.5) overlaps.push([a.name, b.name]);
  }));
  const width = document.documentElement.clientWidth;
  return {controls: boxes.length, overlaps, outside: boxes.filter((b) => b.l < 0 || b.r > width + 0.5).map((b) => b.name),
          page_width: document.documentElement.scrollWidth, width};
}"""


def assert_fits(page, min_controls: int) -> None:
    """At each width: no two form controls intersect, none sticks out, the page does not scroll sideways."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        got = page.evaluate(LAYOUT)
        assert got["width"] == width and got["controls"] >= min_controls, got
        assert not got["overlaps"] and not got["outside"] and got["page_width"] <= width, got
    page.set_viewport_size({"width": 1280, "height": 900})


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def uploaded(service, files):
    """A teacher and a dataset that go together (64 features), uploaded the way a user would,
    outside the page; the module's tests share them."""
    with service.client() as c:
        return {"teacher": upload_teacher(c, files["torchscript"], name="dashboard-teacher"),
                "dataset": upload_dataset(c, files["csv"], label_column="digit", name="dashboard-digits")}


def enter_key(page, service):
    expect(page.locator("#key-prompt")).to_be_visible()
    expect(page.locator("#key-error")).to_be_hidden()  # nothing typed yet: no error
    page.fill("#api-key", service.api_key)
    page.click("#save-key")
    expect(page.locator("#key-prompt")).to_be_hidden()


@pytest.fixture()
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.problems = []  # uncaught errors in the page's script fail the test
    page.on("pageerror", lambda exc: page.problems.append(str(exc)))
    yield page
    context.close()


def test_dashboard_start_watch_download(service, uploaded, page, tmp_path):
    teacher, dataset = uploaded["teacher"], uploaded["dataset"]
    page.goto(service.base_url + "/")
    expect(page.locator("#key-prompt")).to_be_visible()
    expect(page.locator("#key-error")).to_be_hidden()  # no error before a key is typed
    page.fill("#api-key", "kd_" + "n" * 43)
    page.click("#save-key")
    expect(page.locator("#key-error")).to_contain_text("invalid or revoked API key")
    page.fill("#api-key", service.api_key)
    page.click("#save-key")
    expect(page.locator("#jobs-table")).to_be_visible()
    expect(page.locator("#key-prompt")).to_be_hidden()

    page.click("#new-job")
    expect(page.locator("#job-form #start-job")).to_be_visible()
    # the pickers start on a pair that goes together (the newest teacher, a dataset of its input
    # shape), shown by name with the id after it
    expect(page.locator("#teacher")).to_have_value(teacher["id"])
    expect(page.locator("#dataset")).to_have_value(dataset["id"])
    expect(page.locator("#teacher option:checked")).to_contain_text(f"dashboard-teacher · torchscript · 64 → 10 · {teacher['id']}")
    expect(page.locator("#architecture")).to_have_value("mlp")
    expect(page.locator("#method")).to_have_value("kd")  # what the service picks for a classifier teacher
    expect(page.locator('[name="method.temperature"]')).to_have_value("4")  # the registry's default
    page.fill('[name="student.hidden_sizes"]', "32")  # widths as a list of numbers, not JSON
    page.fill("#epochs", str(EPOCHS))

    # bad input: the API's 422 is shown with its code, and the field it names is marked ...
    page.fill('[name="method.alpha"]', "1.5")
    page.click("#start-job")
    expect(page.locator("#form-error")).to_contain_text("invalid_request")
    expect(page.locator("#form-error")).to_contain_text("alpha")
    expect(page.locator('[name="method.alpha"].invalid')).to_be_visible()

    # ... until the field is fixed
    page.fill('[name="method.alpha"]', "0.8")
    expect(page.locator("#form-error")).to_be_hidden()
    expect(page.locator("#job-form .invalid")).to_have_count(0)
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
    expect(page.locator(".facts")).to_contain_text(f"dashboard-teacher {teacher['id']}")  # names, ids after them
    expect(page.locator(".facts")).to_contain_text(f"dashboard-digits {dataset['id']}")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "dashboard-job.png"), full_page=True)

    # the jobs table shows it
    page.click('nav a[data-nav="jobs"]')
    expect(page.locator(f'#jobs-table tr[data-job="{job_id}"] .badge')).to_have_text("succeeded")
    expect(page.locator(f'#jobs-table tr[data-job="{job_id}"]')).to_contain_text("dashboard-teacher → dashboard-digits")
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

    # "Clone job" opens New job filled in with the job's teacher, data, student, method and training:
    # the request it would send (answered here by a stand-in 422, so no second job trains) is the job's
    page.goto(service.base_url + f"/#/jobs/{job_id}")
    page.click("#clone-job")
    page.wait_for_url(re.compile(rf"#/new/{job_id}$"))
    expect(page.locator("#dataset")).to_have_value(dataset["id"])
    expect(page.locator('[name="student.hidden_sizes"]')).to_have_value("32")
    expect(page.locator('[name="method.alpha"]')).to_have_value("0.8")
    expect(page.locator("#epochs")).to_have_value(str(EPOCHS))
    stand_in = {"error": {"code": "invalid_request", "message": "stand-in refusal", "param": "training.epochs"}}
    page.route("**/v1/jobs", lambda route: route.fulfill(status=422, json=stand_in) if route.request.method == "POST"
               else route.continue_())
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as request:
        page.click("#start-job")
    sent = request.value.post_data_json
    assert (sent["teacher_id"], sent["dataset_id"]) == (teacher["id"], dataset["id"]), sent
    assert sent["student"] == {"architecture": "mlp", "params": {"hidden_sizes": [32]}}, sent
    assert sent["method"] == {"name": "kd", "params": {"alpha": 0.8}}, sent
    assert sent["training"] == job["training"], sent
    assert sent["export"] == {k: v for k, v in job["export"].items() if k != "onnx"}, sent
    expect(page.locator("#form-error")).to_have_text("invalid_request: stand-in refusal")
    expect(page.locator("#epochs.invalid")).to_be_visible()
    assert not page.problems, page.problems


def test_dashboard_uploads_pickers_and_layout(service, uploaded, page, tmp_path):
    """Upload a dataset from the page (a refusal first: the API's message is shown, then cleared by
    the fixed upload); the pickers offer it only where it fits; a job failing at run time shows
    its reason in the jobs list; and the forms fit a phone, a laptop and a wide screen."""
    teacher = uploaded["teacher"]
    small = tmp_path / "four-features.csv"
    small.write_text("f0,f1,f2,f3,digit\n" + "".join(f"{i % 7},{i % 5},{i % 3},{i % 2},{i % 10}\n" for i in range(40)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")

    page.goto(service.base_url + "/#/data")
    enter_key(page, service)
    expect(page.locator("#dataset-upload")).to_be_visible()
    assert_fits(page, min_controls=12)

    page.set_input_files("#dataset-file", str(small))
    page.fill("#dataset-name", "dashboard-four-features")
    page.fill("#label_column", "nope")
    page.click("#dataset-upload-submit")
    status = page.locator("#dataset-upload-status")
    expect(status).to_have_text("invalid_request: the CSV has no column 'nope'; its columns are "
                                "['f0', 'f1', 'f2', 'f3', 'digit']")
    expect(page.locator("#label_column.invalid")).to_be_visible()
    page.fill("#label_column", "digit")
    page.click("#dataset-upload-submit")
    expect(status).to_contain_text("Uploaded dashboard-four-features ds_")
    expect(status).not_to_contain_text("invalid_request")
    expect(page.locator("#dataset-upload .invalid")).to_have_count(0)
    row = page.locator("#datasets-table tr", has_text="dashboard-four-features")
    expect(row).to_contain_text("[4]")
    small_id = row.get_attribute("data-dataset")

    page.set_input_files("#teacher-file", str(junk))
    page.click("#teacher-upload-submit")
    expect(page.locator("#teacher-upload-status")).to_contain_text("unsupported_format: not a valid ONNX model")
    expect(page.locator("#teacher-file.invalid")).to_be_visible()

    # New job: with the 64-feature teacher the 4-feature dataset is left out; with no teacher it
    # is offered, and only methods that need no teacher are
    page.click('nav a[data-nav="new"]')
    page.select_option("#teacher", teacher["id"])
    expect(page.locator("#dataset option")).not_to_have_count(0)
    expect(page.locator(f'#dataset option[value="{small_id}"]')).to_have_count(0)
    page.select_option("#teacher", "")
    expect(page.locator(f'#dataset option[value="{small_id}"]')).to_have_count(1)
    expect(page.locator("#method")).to_have_value("ce")
    expect(page.locator('#method option[value="kd"]')).to_have_count(0)
    page.select_option("#teacher", teacher["id"])
    expect(page.locator("#method")).to_have_value("kd")
    page.select_option("#dataset", uploaded["dataset"]["id"])
    page.click("#advanced summary")
    assert_fits(page, min_controls=20)
    page.screenshot(path=str(DOCS / "dashboard-new.png"), full_page=True)

    # a job that fails at run time (a 1 s limit, set in the advanced box): its reason is in the list
    page.fill("#epochs", "5000")
    page.fill("#advanced-json", '{"training": {"max_duration_s": 1, "early_stopping_patience": null}}')
    page.click("#start-job")
    page.wait_for_url(re.compile(r"#/jobs/job_[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("#job-status")).to_have_text("failed", timeout=120_000)
    reason = "the job ran past training.max_duration_s = 1 s"
    expect(page.locator("#job-error")).to_contain_text(reason)
    page.click('nav a[data-nav="jobs"]')
    expect(page.locator(f'#jobs-table tr[data-job="{job_id}"] .row-error')).to_have_text(reason)
    assert not page.problems, page.problems


def test_dashboard_search_page_draws_the_files_as_trials_finish(service, uploaded, page):
    """A search's page: the scatter of its files (score against latency) fills in while the trials
    run, ends with the Pareto front and the recommendation marked; the searches table lists it."""
    ids = {"teacher_id": uploaded["teacher"]["id"], "dataset_id": uploaded["dataset"]["id"]}
    with service.client() as c:
        search = c.post("/v1/searches", json={
            **ids, "targets": {"latency_ms": 50.0, "min_accuracy": 0.5},
            "space": {"methods": ["kd"], "students": [{"architecture": "mlp", "params": {"hidden_sizes": [16]}}],
                      "epochs": 25, "precisions": ["fp32", "int8"]},
            "budget": {"trials": 3, "parallel": 1}}).json()
    page.goto(service.base_url + f"/#/searches/{search['id']}")
    enter_key(page, service)
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
    expect(page.locator(f'#searches-table tr[data-search="{search["id"]}"]')).to_contain_text("dashboard-teacher → dashboard-digits")
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
