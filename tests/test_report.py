"""`clipcompare report`: HTML/Markdown from generated evaluate and train runs, checked against their files."""

from __future__ import annotations

import json
import os
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from clipcompare.cli import main
from clipcompare.evaluation.metrics import expected_calibration_error, reliability_bins, top_matrix
from clipcompare.report import ReportOptions, build_report, render_html, write_markdown
from clipcompare.report.sections.evaluate import pick_gallery
from report_runs import MODEL_A, MODEL_B, TRAIN_RECALLS, make_evaluate_run, make_train_run


class Page(HTMLParser):
    """What the tests read from a report: tables by role, gallery tiles by role, every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.galleries: dict[str, list[list[str]]] = {}  # role → one list of tile paths per gallery
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.img_srcs: list[str] = []
        self.banner = False
        self.text: list[str] = []
        self._table: str | None = None
        self._gallery: str | None = None
        self._cell: list | None = None
        self._row: list | None = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            if key in a:
                self.urls.append((tag, key, a[key]))
        if tag == "img":
            self.img_srcs.append(a.get("src", ""))
        if a.get("id") == "random-weights":
            self.banner = True
        if tag == "table":
            self._table = a.get("data-role", "")
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ["", a.get("data-value")]
        elif tag == "div" and "gallery" in (a.get("class") or "").split():
            self._gallery = a.get("data-role", "")
            self.galleries.setdefault(self._gallery, []).append([])
        elif tag == "div" and self._gallery is not None and "tile" in (a.get("class") or "").split():
            self.galleries[self._gallery][-1].append(a["data-path"])
        if tag == "div" and self._gallery is not None:
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "div" and self._gallery is not None:
            self._depth -= 1
            if self._depth == 0:
                self._gallery = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def evaluate_run(tmp_path_factory):
    return make_evaluate_run(tmp_path_factory.mktemp("report"))


# --------------------------------------------------------------------------- ECE


def test_ece_on_a_hand_made_case():
    # bins (14/15, 1]: two images, confidence 0.95, one right: |0.5 - 0.95| * 2/5
    # bins (8/15, 9/15]: two at 0.55, both right: |1 - 0.55| * 2/5;  (3/15, 4/15]: one at 0.25, wrong: 0.25 * 1/5
    conf = np.array([0.95, 0.95, 0.55, 0.55, 0.25])
    correct = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx((0.45 * 2 + 0.45 * 2 + 0.25) / 5, abs=1e-12)
    assert expected_calibration_error(np.array([]), np.array([], dtype=bool)) is None
    bins = reliability_bins(conf, correct)
    assert sum(bins["count"]) == 5 and bins["count"][14] == 2 and bins["count"][8] == 2 and bins["count"][3] == 1


def _reference_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al.'s loop: bins (lower, upper] from linspace(0, 1, n+1)."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return ece


def test_ece_matches_the_reference_loop_including_values_on_bin_edges():
    rng = np.random.default_rng(3)
    edges = np.linspace(0, 1, 16)[1:]
    conf = np.concatenate([rng.random(500), edges])  # exact edges land in the bin they close
    correct = rng.random(len(conf)) < conf
    assert expected_calibration_error(conf, correct) == pytest.approx(_reference_ece(conf, correct), abs=1e-12)


# --------------------------------------------------------------------------- evaluate section


def test_accuracy_table_equals_metrics_json_and_images_are_embedded(evaluate_run):
    run, _ = evaluate_run
    metrics = json.loads((run / "metrics.json").read_text())
    page = parse(render_html(build_report([run])))
    rows = page.tables["accuracy"]
    assert len(rows) == 4  # 2 datasets x 2 models
    for row in rows:
        (dataset, _), (model, _), *numbers = row
        m = metrics["datasets"][dataset]["models"][model]
        expected = [m["top1"], m["top5"], m["mean_per_class"], m["mean_wordnet_distance_wrong"], m["n"],
                    metrics["datasets"][dataset]["skipped"]["count"]]
        shown = [f"{100 * v:.2f}" for v in expected[:3]] + [f"{expected[3]:.2f}"] + [f"{v:,}" for v in expected[4:]]
        assert [text for text, _ in numbers] == shown
        assert [float(value) for _, value in numbers] == expected  # the exact numbers behind the cells
    assert page.img_srcs and all(s.startswith("data:image/") for s in page.img_srcs)
    # nothing to fetch: every src/href is a data: URI or an in-page anchor
    assert all(v.startswith(("data:", "#")) for _, _, v in page.urls), page.urls
    assert page.banner and any(MODEL_B in t for t in page.text)


def test_calibration_table_equals_ece_of_the_predictions(evaluate_run):
    run, _ = evaluate_run
    page = parse(render_html(build_report([run])))
    got = page.tables["calibration"]
    assert len(got) == 4
    df = pd.read_parquet(run / "predictions" / "photos.parquet")
    for (model, _), (_, ece), *_ in got[:2]:
        conf = np.stack(df[f"prob5[{model}]"].to_numpy())[:, 0]
        correct = top_matrix(df, model)[:, 0] == df["target"].to_numpy()
        assert float(ece) == pytest.approx(_reference_ece(conf.astype(np.float64), correct), abs=1e-9)


def _only_right(run: Path, dataset: str, model: str, other: str) -> list[str]:
    df = pd.read_parquet(run / "predictions" / f"{dataset}.parquet")
    t = df["target"].to_numpy()
    right = {m: top_matrix(df, m)[:, 0] == t for m in (model, other)}
    return df["path"][right[model] & ~right[other]].tolist()


def test_galleries_list_exactly_the_images_only_one_model_gets_right(evaluate_run):
    run, _ = evaluate_run
    big = ReportOptions(gallery_per_class=100, gallery_total=1000)
    page = parse(render_html(build_report([run], big)))
    for m, other in ((MODEL_A, MODEL_B), (MODEL_B, MODEL_A)):
        expected = [_only_right(run, dataset, m, other) for dataset in ("photos", "sketches")]
        assert all(expected), "the generated predictions must give each model images only it gets right"
        assert page.galleries[f"only:{m}"] == expected


def test_galleries_are_capped_per_class_and_in_total_with_a_fixed_choice(evaluate_run):
    run, images = evaluate_run
    small = ReportOptions(gallery_per_class=1, gallery_total=3)
    first = parse(render_html(build_report([run], small))).galleries
    again = parse(render_html(build_report([run], small))).galleries
    assert first == again
    for m, other in ((MODEL_A, MODEL_B), (MODEL_B, MODEL_A)):
        tiles = first[f"only:{m}"][1]  # the second dataset's
        expected = _only_right(run, "sketches", m, other)
        classes = Counter(p.split("/")[0] for p in expected)
        assert len(tiles) == min(3, len(classes))
        assert set(tiles) <= set(expected)
        assert max(Counter(p.split("/")[0] for p in tiles).values()) == 1


def test_pick_gallery_bounds_and_order():
    targets = np.array([0] * 50 + [1] * 50 + [2] * 5)
    chosen = pick_gallery(np.arange(105), targets, per_class=3, total=7, seed=1)
    assert len(chosen) == 7 and list(chosen) == sorted(chosen)
    assert max(Counter(targets[chosen]).values()) == 3
    assert list(pick_gallery(np.arange(105), targets, 3, 7, seed=1)) == list(chosen)
    assert len(pick_gallery(np.array([], dtype=int), targets, 3, 7, seed=1)) == 0


def test_no_banner_when_every_model_is_pretrained(tmp_path):
    run, _ = make_evaluate_run(tmp_path, per_class=2, random_b=False)
    page = parse(render_html(build_report([run])))
    assert not page.banner


# --------------------------------------------------------------------------- train section


def test_train_section_from_the_train_layout(tmp_path):
    run = make_train_run(tmp_path)
    report = build_report([run])
    (section,) = report.sections
    assert section.kind == "train" and section.random_weights == ["clip:RN50@openai"]
    page = parse(render_html(report))
    epochs = [json.loads(line) for line in (run / "log" / "epochs.jsonl").read_text().splitlines()]
    rows = page.tables["epochs"]
    assert [int(r[0][1]) for r in rows] == [e["epoch"] for e in epochs]
    for row, e in zip(rows, epochs):
        assert [float(v) for _, v in row[2:]] == [e[k] for k in (*TRAIN_RECALLS, "mean_recall@1")]
    retrieval = json.loads((run / "retrieval.json").read_text())["rows"]
    got = page.tables["retrieval"]
    assert [r[1][0] for r in got] == ["start", "trained", "reference"]
    for row, want in zip(got, retrieval):
        assert [float(v) for _, v in row[2:8]] == [want[k] for k in TRAIN_RECALLS]
    assert page.galleries["retrieval-example"] == [["val/0.jpg", "val/2.jpg", "val/1.jpg", "val/3.jpg", "val/4.jpg"],
                                                   ["val/0.jpg", "val/1.jpg", "val/2.jpg", "val/3.jpg", "val/4.jpg",
                                                    "val/5.jpg"]]  # the missed true image, shown last
    html = render_html(report)
    assert html.count('class="tile marked"') == 2  # the true image in the first top-5, and the second's missed one
    assert "the true image is not among the top 5" in html and "the true image (not retrieved)" in html
    figures = [b.title for b in section.blocks if b.kind == "figure"]
    assert figures == ["loss, learning rate and temperature", "recalls per epoch"]
    assert page.banner



def test_train_section_from_a_steps_log_with_garbage_bytes_skips_and_counts_them(tmp_path, capsys, caplog):
    """A damaged log/steps.jsonl (non-UTF-8 bytes, a torn line) still gives a report of what is readable."""
    run = make_train_run(tmp_path)  # 3 epochs x 4 steps
    steps = run / "log" / "steps.jsonl"
    lines = steps.read_bytes().splitlines(keepends=True)
    lines[5] = b"\x80\x81\xfe{\"step\": 5, \"loss\"\n"  # damaged bytes in place of step 5
    steps.write_bytes(b"".join(lines) + b"\xff\xfe\x00garbage\n" + b"[1, 2]\n")
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert f"{steps}: skipped 3 unreadable lines" in caplog.text
    (section,) = build_report([run]).sections
    (curves,) = [b for b in section.blocks if b.kind == "figure" and b.title.startswith("loss")]
    assert curves.caption == "11 optimizer steps"
    assert "epochs" in parse(out.read_text()).tables


# --------------------------------------------------------------------------- Markdown and the CLI


def test_markdown_writes_tables_and_images_beside_it(evaluate_run, tmp_path):
    run, _ = evaluate_run
    md = write_markdown(build_report([run]), tmp_path / "out" / "report.md")
    text = md.read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    top1 = metrics["datasets"]["photos"]["models"][MODEL_A]["top1"]
    assert f"| photos | {MODEL_A} | {100 * top1:.2f} |" in text
    links = [line.split("](", 1)[1].split(")", 1)[0] for line in text.splitlines() if "](" in line]
    assert links and all((md.parent / link).is_file() for link in links)
    pngs = list((md.parent / "report_files").glob("*.png"))
    assert len(pngs) >= 5 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "Random weights" in text



def test_markdown_escapes_titles_class_and_file_names(tmp_path, evaluate_run, capsys):
    """Hostile names in every place the Markdown shows text: literal text, no HTML tag, no extra table column."""
    from clipcompare.report.blocks import Cell, Gallery, Heading, Prediction, Report, Section, Table, Text, Tile

    tile = Tile("evil/<script>`x`|.jpg", b"\xff\xd8jpeg", "<b>tench</b>",
                {"m<i>": [Prediction("*bold* [x](javascript:alert(1))", 0.5, True)]})
    section = Section("evaluate", "run <script>alert(1)</script>", "/runs/`odd`", blocks=[
        Heading("<script>alert(1)</script> #", 3),
        Text("a <img src=x onerror=alert(1)> & _under_"),
        Table("per class", ["class|name", "n"], [[Cell("<img src=x onerror=alert(1)>"), Cell("a | b")]], [False, True]),
        Gallery("only <em>one</em>", [tile]),
    ], facts=[("dataset", "x\n## injected")])
    md = write_markdown(Report("<script>alert('t')</script>", "now", [section]), tmp_path / "r.md")
    lines = md.read_text().splitlines()
    assert lines[0] == "# &lt;script&gt;alert('t')&lt;/script&gt;"
    assert "## run &lt;script&gt;alert(1)&lt;/script&gt;" in lines
    assert "- directory: `` /runs/`odd` ``" in lines  # a code span: padded, as its text ends with a backtick
    assert "- dataset: x \\#\\# injected" in lines  # one line: no heading injected
    assert "### &lt;script&gt;alert(1)&lt;/script&gt; \\#" in lines
    assert "a &lt;img src=x onerror=alert(1)&gt; &amp; \\_under\\_" in lines
    table = [line.rstrip() for line in lines if line.startswith("|")]
    assert table == ["| class\\|name | n |", "|---|---:|", "| &lt;img src=x onerror=alert(1)&gt; | a \\| b |"]
    (tile_line,) = [line for line in lines if line.startswith("- ![")]
    assert tile_line == ("- ![evil/&lt;script&gt;\\`x\\`\\|.jpg](r_files/s1-04-only-em-one-em-01.jpg) "
                         "&lt;b&gt;tench&lt;/b&gt; (``evil/<script>`x`|.jpg``); m&lt;i&gt;: "
                         "\\*bold\\* \\[x\\](javascript:alert(1)) 50%")
    # the CLI's --title, and an --out name with a space: links still resolve
    run, _ = evaluate_run
    out = tmp_path / "my report (1).html"
    assert main(["report", str(run), "--out", str(out), "--markdown", "--title", "<script>x</script>"]) == 0
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# &lt;script&gt;x&lt;/script&gt;\n") and "<script" not in text
    links = [unquote(line.split("](", 1)[1].split(")", 1)[0]) for line in text.splitlines() if "](" in line]
    assert links and all((tmp_path / link).is_file() for link in links)


def test_cli_report_html_and_markdown(evaluate_run, tmp_path, capsys):
    run, _ = evaluate_run
    train = make_train_run(tmp_path)
    out = tmp_path / "r" / "report.html"
    assert main(["report", str(run), str(train), "--out", str(out), "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"wrote {out}"
    assert out.is_file() and (tmp_path / "r" / "report.md").is_file()
    page = parse(out.read_text())
    assert {"accuracy", "epochs", "retrieval"} <= set(page.tables)
    # a directory holding run directories stands for them
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "all.html")]) == 0
    assert "data-kind=\"train\"" in (tmp_path / "all.html").read_text()



def test_cli_report_out_a_directory_or_the_markdown_name_is_one_line_and_writes_nothing(evaluate_run, tmp_path,
                                                                                       capsys):
    run, _ = evaluate_run
    out = tmp_path / "out"
    out.mkdir()
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"clipcompare: error: --out {out} is a directory; name the HTML file to write "
                                       f"(e.g. {out / 'report.html'})\n")
    (out / "r.md").mkdir()
    assert main(["report", str(run), "--out", str(out / "r.html"), "--markdown"]) == 2
    assert capsys.readouterr().err == (f"clipcompare: error: --markdown writes {out / 'r.md'}, which is a directory; "
                                       "choose another --out\n")
    # the HTML and the Markdown would be one file
    assert main(["report", str(run), "--out", str(out / "x.md"), "--markdown"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipcompare: error: --out {out / 'x.md'}: --markdown writes the Markdown to "
                          f"{out / 'x.md'} beside the HTML") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "r.md"]  # no .NAME.tmp, no x.md, no assets



def test_cli_report_on_a_full_disk_is_one_line_and_leaves_no_temp_file(evaluate_run, tmp_path, monkeypatch, capsys):
    """ENOSPC simulated in-process: the report's temp file meets a full disk half-way."""
    import errno
    import pathlib

    run, _ = evaluate_run
    out = tmp_path / "r" / "report.html"
    original = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if self.name == ".report.html.tmp":
            original(self, data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"clipcompare: error: cannot write {out}: No space left on device\n"
    assert list(out.parent.iterdir()) == []


def test_cli_report_into_a_folder_it_cannot_create_is_one_line(evaluate_run, tmp_path, capsys):
    """--out under a path whose parent is a file: the folder cannot be made; one line, nothing written."""
    run, _ = evaluate_run
    (tmp_path / "blocker").write_text("a file where the folder would go")
    out = tmp_path / "blocker" / "sub" / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"clipcompare: error: cannot create the folder {out.parent}: "
                                       "Not a directory\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"clipcompare: error: run directory not found: {tmp_path / 'nope'}"
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipcompare: error:") and "is not a run directory" in err and "\n" not in err
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text("{}")
    assert main(["report", str(tmp_path / "unfinished")]) == 2
    assert "the evaluate run is unfinished" in capsys.readouterr().err
