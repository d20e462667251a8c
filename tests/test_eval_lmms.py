"""The lmms-eval plugin with the real lmms-eval package (the CI-installed extra, see scripts/setup.sh): entry-point
discovery, `lmms-eval --model vxlp` on a local task over generated videos, and the loglikelihood and multi-round
request types. Skipped, with the reason, where lmms-eval is not installed."""

import json
import os
import subprocess
import sys

import pytest
import torch

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (Python 3.11) or tomli")

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (scripts/setup.sh installs the extra)")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402

from test_eval_support import make_tiny_model, write_clip  # noqa: E402
from vxlp_model.eval.benchmarks import EvalItem  # noqa: E402
from vxlp_model.eval.runner import answer_items, read_answer_log  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUP = "lmms_eval.models"


def _declared_entry_point():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"][GROUP]
    assert list(eps) == ["vxlp"]
    return eps["vxlp"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    model = make_tiny_model(root / "model")
    docs = []
    for i in range(3):
        video = write_clip(root / "videos" / f"d{i}.mp4", n=6 + i, seed=40 + i)
        docs.append({"id": f"d{i}", "video": video, "question": f"Which colour is in clip {i}?",
                     "options": ["red", "green", "blue", "pink"], "answer": "ABCD"[i]})
    return root, model, docs


def test_entry_point_is_declared_and_resolves_to_the_model():
    from importlib.metadata import EntryPoint, distribution

    value = _declared_entry_point()
    manifest = EntryPoint(name="vxlp", value=value, group=GROUP).load()()
    assert manifest.model_id == "vxlp"
    module, cls = manifest.simple_class_path.rsplit(".", 1)
    model_cls = getattr(__import__(module, fromlist=[cls]), cls)
    assert issubclass(model_cls, lmms) and model_cls.is_simple
    try:  # an installed vxlp (scripts/setup.sh installs it) must carry the same entry point
        installed = [ep for ep in distribution("vxlp").entry_points if ep.group == GROUP]
    except Exception:
        installed = None
    if installed:
        assert [(ep.name, ep.value) for ep in installed] == [("vxlp", value)]


TASK_YAML = """task: vxlp_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""

TASK_UTILS = '''POST = "Answer with the option's letter from the given choices directly."


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\\n".join(f"{l}. {o}" for l, o in zip("ABCD", doc["options"]))
    return f"{doc['question']}\\n{options}\\n{POST}"


def process_results(doc, results):
    return {"accuracy": float(results[0].strip()[:1] == doc["answer"])}
'''


def test_lmms_eval_cli_runs_vxlp_from_its_entry_point(setup, tmp_path):
    """`lmms-eval --model vxlp` with an unmodified lmms-eval: the model is found through the `lmms_eval.models`
    entry point (an installed distribution's metadata, built here from pyproject.toml), and its answers are exactly
    those of vxlp's own evaluation runner for the same prompts and videos."""
    root, model, docs = setup
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "docs.json").write_text(json.dumps(docs))
    (task_dir / "vxlp_tiny_mc.yaml").write_text(TASK_YAML.format(docs=task_dir / "docs.json"))
    (task_dir / "utils.py").write_text(TASK_UTILS)
    # the metadata `pip install .` writes, with the entry point of pyproject.toml (no change to the environment)
    site = tmp_path / "site"
    info = site / "vxlp_lmms_entry_point-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vxlp-lmms-entry-point\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\nvxlp = {_declared_entry_point()}\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), REPO, os.environ.get("PYTHONPATH", "")]),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import sys; from lmms_eval.cli.dispatch import main; sys.exit(main())",
           "--model", "vxlp", "--model_args", f"pretrained={model},device=cpu", "--tasks", "vxlp_tiny_mc",
           "--include_path", str(task_dir), "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    results = [p for p in out.rglob("*results.json")]
    samples = [p for p in out.rglob("*samples_vxlp_tiny_mc.jsonl")]
    assert len(results) == 1 and len(samples) == 1, list(out.rglob("*"))
    logged = sorted((json.loads(line) for line in samples[0].read_text().splitlines()), key=lambda r: r["doc_id"])
    responses = [r["filtered_resps"] if isinstance(r["filtered_resps"], str) else r["filtered_resps"][0] for r in logged]
    accuracy = json.loads(results[0].read_text())["results"]["vxlp_tiny_mc"]["accuracy,none"]
    assert accuracy == pytest.approx(sum(r.strip()[:1] == d["answer"] for r, d in zip(responses, docs)) / 3)
    # the same questions through vxlp's runner, one at a time on one thread as above
    from transformers import AutoProcessor

    from vxlp_model import VideoXLProForConditionalGeneration

    sys.path.insert(0, str(task_dir))
    try:
        import utils as task_utils
    finally:
        sys.path.remove(str(task_dir))
        sys.modules.pop("utils", None)
    items = [EvalItem(id=d["id"], task="local", category="x", question=task_utils.doc_to_text(d), answer=d["answer"],
                      video=d["video"]) for d in docs]
    m = VideoXLProForConditionalGeneration.from_pretrained(model).eval()
    p = AutoProcessor.from_pretrained(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        answer_items(items, m, p, str(tmp_path / "ref.jsonl"), batch_size=1, max_new_tokens=4,
                     fps=p.video_processor.fps, max_frames=p.video_processor.max_frames, progress=False)
    finally:
        torch.set_num_threads(threads)
    # lmms-eval logs its responses after strip_reasoning_tags, which also strips surrounding whitespace
    assert [r["pred"].strip() for r in read_answer_log(str(tmp_path / "ref.jsonl"))] == [r.strip() for r in responses]


def _instance(kind, args, doc_id=0):
    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def test_loglikelihood_agrees_with_greedy_generation_and_multi_round(setup):
    from vxlp_model.eval.lmms_plugin import VideoXLPro

    _, model, docs = setup
    lm = VideoXLPro(pretrained=model, device="cpu")
    lm.task_dict = {"t": {"test": docs}}
    visual = lambda doc: [doc["video"]]  # noqa: E731
    context = "Which colour? A. red B. green C. blue D. pink Answer with the option's letter."
    greedy = lm.generate_until([_instance("generate_until", (context, {"max_new_tokens": 1}, visual, 0, "t", "test"))])[0]
    assert greedy in ("A", "B", "C", "D")
    scores = lm.loglikelihood([_instance("loglikelihood", (context, letter, visual, 0, "t", "test")) for letter in "ABCD"])
    assert all(lp <= 0 for lp, _ in scores) and len({lp for lp, _ in scores}) == 4
    assert [g for _, g in scores] == [letter == greedy for letter in "ABCD"]
    assert max(zip(scores, "ABCD"))[1] == greedy  # the greedy token has the highest log-probability
    # doc_to_target as a callable, as lmms-eval passes it for `loglikelihood` tasks
    (lp, g), = lm.loglikelihood([_instance("loglikelihood", (context, lambda doc: greedy, visual, 0, "t", "test"))])
    assert g and lp == pytest.approx(dict(zip("ABCD", scores))[greedy][0], rel=1e-5)

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        done = round_idx >= 2
        return [doc["video"]], f"{context} (round {round_idx})", done, previous_output, {"round": round_idx}

    rounds = lm.generate_until_multi_round(
        [_instance("generate_until_multi_round", (context, {"max_new_tokens": 1}, visual, doc_to_text, 0, "t", "test"))]
    )
    assert len(rounds) == 1 and len(rounds[0]) == 2 and rounds[0][0] == greedy
    with pytest.raises(ValueError, match="pretrained=DIR"):
        VideoXLPro(device="cpu")
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        VideoXLPro(pretrained=model, device="cpu", batch_size="many")
