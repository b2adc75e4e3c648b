"""The study's command line as a careless user meets it (issue 31): a parameter of the wrong type, a bad `--stages`, a
`--resume` of a run that does not exist, and Ctrl-C. Each fails at once with one line naming what is wrong and the right
exit status (1 a bad parameter file, 2 a bad command line, 130 an interrupt), and writes nothing it should not."""
from __future__ import annotations
import os, signal, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from conftest import sigint_as_in_a_terminal

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(Path(sys.executable).parent / "deepfake-explain-study")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _params(tmp: Path, **changes) -> Path:
    p = {**yaml.safe_load((ROOT / "configs" / "study_quick.yaml").read_text()), **changes}
    path = tmp / f"params_{len(list(tmp.glob('params_*')))}.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([STUDY, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)


def test_bad_parameters_and_flags_fail_before_work(tmp_path):
    cases = {  # what the user typed -> (exit status, the line's content)
        "wrong type": (["--params", _params(tmp_path, num_epochs="ten"), "--output", tmp_path / "a"], 1,
                       "num_epochs: expected an integer >= 1, got 'ten' (str)"),
        "no data_root": (["--params", _params(tmp_path, dataset="FACEFORENSICS"), "--output", tmp_path / "b"], 1,
                         "data_root: required with dataset 'FACEFORENSICS'"),
        "bad stage": (["--params", _params(tmp_path), "--stages", "train,evalute", "--output", tmp_path / "c"], 2,
                      "--stages: unknown stage(s) ['evalute'] (did you mean 'evaluate'?)"),
        "resume nothing": (["--params", _params(tmp_path), "--resume", "--output", tmp_path / "d"], 2,
                           "no such run folder, nothing to resume"),
    }
    with ThreadPoolExecutor(2) as pool:  # each run is mostly Python start-up
        done = dict(zip(cases, pool.map(lambda c: _run(*c[0]), cases.values())))
    for name, (args, code, text) in cases.items():
        r = done[name]
        assert r.returncode == code, (name, r.returncode, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and lines[0].startswith("deepfake-explain-study: "), (name, r.stderr)
        assert not Path(args[-1]).exists(), f"{name}: the run folder was created"


def test_ctrl_c_ends_with_one_line_and_resumes(tmp_path):
    """SIGINT to the runner and its kernel (what Ctrl-C in a terminal sends the foreground process group) in the middle of
    the generation stage: exit 130, one line saying how far it got and how to go on, no traceback; the rerun with
    --resume completes the stage."""
    params = _params(tmp_path, n_pairs=[1, 1, 1], n_frames=2, size=64)
    cmd = [STUDY, "--params", str(params), "--output", str(tmp_path / "run"), "--stages", "generate"]
    log = tmp_path / "err.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=ENV, cwd=ROOT, start_new_session=True,
                                preexec_fn=sigint_as_in_a_terminal)
    deadline = time.time() + 240
    while "[study] generate:  14%" not in log.read_text():  # the stage's kernel has run its first cell
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("deepfake-explain-study: interrupted") and "rerun with --resume" in last, err[-3000:]
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "stages" / "generate.json").exists()
