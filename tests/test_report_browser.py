"""The HTML report as a user meets it: opened in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), built from results of two machines and two commits.

The results come from one real `fusebench bench` run on this machine (reference, cpu and
torch on two smoke cases). Copies of its records are relabelled as a second commit and a
second machine (with slower timings), so that the merge, the per-commit rows and the
cross-machine columns have something to show; the relabelled copies exist only in this
test. Without a browser the test skips, unless FUSEBENCH_REQUIRE_BROWSER=1 (CI sets it),
where a missing browser is a failure.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from harness.cli import main
from tests.browser import chrome

ROOT = Path(__file__).resolve().parent.parent
SECOND_MACHINE = "second-machine-fixture"
SCREENSHOT = ROOT / "reports" / "browser-test.png"




@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    first = tmp / "first.jsonl"
    code = main(["bench", "--fusion", "add_rmsnorm,gemm_swiglu", "--backend", "reference,cpu,torch",
                 "--variant", "float64,fused,unfused,eager", "--case", "smoke.*", "--dtype", "float32,bfloat16",
                 "--budget", "0.1", "--min-samples", "8", "-o", str(first)])
    assert code == 0
    records = [json.loads(line) for line in first.read_text().splitlines()]
    assert any(r.get("median_s") for r in records)
    later_commit = [dict(copy.deepcopy(r), commit="f" * 40, run_id="fixture-commit") for r in records]
    other_machine = []
    for r in copy.deepcopy(records):
        r.update(machine=SECOND_MACHINE, run_id="fixture-machine")
        r["fingerprint"]["cpu"] = "fixture CPU"
        slower = 1.5 if r["variant"] == "fused" else 1.1
        for key in ("median_s", "p20_s", "p80_s", "min_s"):
            if r.get(key):
                r[key] *= slower
        for key in ("gbps", "gflops", "frac_bw", "frac_flops", "frac_peak"):
            if r.get(key):
                r[key] /= slower
        other_machine.append(r)
    second = tmp / "second.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in later_commit + other_machine))
    out = tmp / "report.html"
    assert main(["report", str(first), str(second), "--no-committed", "-o", str(out)]) == 0
    return out, records


def test_report_is_self_contained(report):
    html = report[0].read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not load anything from a network"
    assert "<link" not in html


def test_report_in_a_browser(report):
    driver = chrome()
    from selenium.webdriver.common.by import By

    path, records = report
    try:
        driver.get(path.as_uri())
        assert driver.title == "fusebench report"

        summary = driver.find_element(By.ID, "summary")
        text = summary.text
        machine = records[0]["machine"]
        assert machine in text and SECOND_MACHINE in text
        assert records[0]["commit"][:10] in text and "f" * 10 in text
        assert len(summary.find_elements(By.CSS_SELECTOR, "tbody tr")) >= 6  # 2 machines x 3 backends, 2 commits here

        tables = driver.find_elements(By.CSS_SELECTOR, "table.results")
        assert len(tables) == 2  # add_rmsnorm, gemm_swiglu
        _check_sorts(driver, tables[0], "median ms")
        details = tables[0].find_element(By.CSS_SELECTOR, "tbody tr").get_attribute("title")
        for what in ("machine", "commit", "versions", "numpy", "samples", "noise"):
            assert what in details, (what, details)  # every number traceable
        titles = [row.get_attribute("title") for row in tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert any("in 4 interleaved rounds" in t for t in titles), titles  # cpu fused and chain, in turns

        cross = driver.find_elements(By.CSS_SELECTOR, "table.cross")
        assert len(cross) == 2
        head = cross[0].find_element(By.CSS_SELECTOR, "thead").text
        assert machine in head and SECOND_MACHINE in head
        _check_sorts(driver, cross[0], "cpu", exact=False)

        # a fusion's speedup bars are drawn only where its medians are steady enough to rank
        # (report.NOISE_LIMIT); on a busy machine one of the two may have none
        for kind, least in (("roofline", 2), ("speedup", 1), ("error", 2)):
            imgs = driver.find_elements(By.CSS_SELECTOR, f"img.plot.{kind}")
            assert len(imgs) >= least, kind
            for img in imgs:
                assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100

        driver.execute_script("window.scrollTo(0, 0)")
        driver.set_window_size(1400, 2400)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
    finally:
        driver.quit()


def _check_sorts(driver, table, header: str, exact: bool = True):
    """Click the header twice: the column's numbers come out ascending, then descending."""
    from selenium.webdriver.common.by import By

    heads = table.find_elements(By.CSS_SELECTOR, "thead th")
    col = next(i for i, th in enumerate(heads) if (th.text == header if exact else header in th.text))
    values = []
    for _ in range(2):
        heads[col].click()
        cells = [row.find_elements(By.TAG_NAME, "td")[col] for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        nums = [float(v) for v in (c.get_attribute("data-v") for c in cells) if v]
        assert len(nums) >= 2
        values.append(nums)
    assert values[0] == sorted(values[0]) and values[1] == sorted(values[1], reverse=True)
