"""The Lambda package without the emulator: what it imports, that its preprocessing is
training's, how it fails, and that the image and the SAM template are right by
construction (Docker is not available here: cfn-lint and static checks instead)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.preprocess import EvalTransform
from devkit.messy_lake import encode, photo
from devkit.sample_lake import COMMITTED_CROPS
from serve_lambda import handler as handler_module
from serve_lambda.cli import main as serve_main
from serve_lambda.config import SOURCE_SIDE, ServeSettings
from serve_lambda.model import ModelError, load_model
from serve_lambda.routes import route

REPO = Path(__file__).resolve().parent.parent
SERVE = REPO / "serve_lambda"
FORBIDDEN = ("ray", "albumentations", "torchvision", "cv2", "train", "pipeline", "resvg_py")
SERVING_DISTRIBUTIONS = {"torch", "pillow", "numpy", "awslambdaric"}


@pytest.fixture(scope="module")
def served(serve_model_dir):
    return load_model(ServeSettings(model_dir=str(serve_model_dir), torch_threads=1))


def post_event(body: str, base64_encoded: bool = True) -> dict:
    return {
        "version": "2.0",
        "rawPath": "/predict",
        "headers": {"content-type": "image/jpeg"},
        "requestContext": {"http": {"method": "POST", "path": "/predict"}},
        "body": body,
        "isBase64Encoded": base64_encoded,
    }


@pytest.fixture(scope="module")
def handler_modules(serve_model_dir) -> set[str]:
    """sys.modules of a fresh interpreter that imported the handler and loaded the model."""
    code = (
        "import json, sys, serve_lambda.handler as h\n"
        "assert not isinstance(h.STATE, Exception), h.STATE\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    env = {"LAKECLEAN_MODEL_DIR": str(serve_model_dir), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_handler_imports_only_serving_dependencies(handler_modules):
    """What the Lambda image ships: no Ray, torchvision, albumentations, train code."""
    top = {m.split(".")[0] for m in handler_modules}
    assert not top & set(FORBIDDEN), sorted(top & set(FORBIDDEN))
    assert {"torch", "PIL", "numpy", "common", "serve_lambda"} <= top


def test_same_tensor_as_the_training_eval_transform(served):
    """Training evaluates the cleaned images (<= 512 px) with EvalTransform.from_bytes:
    the function gives the same tensor for the same bytes."""
    transform = EvalTransform(
        served.transform.input_size, served.transform.mean, served.transform.std
    )
    samples = [path.read_bytes() for path in sorted(COMMITTED_CROPS.glob("*/*.jpg"))[:6]]
    samples += [encode(photo(SOURCE_SIDE, 300, 4), "JPEG"), encode(photo(97, 203, 5), "PNG")]
    for data in samples:
        assert torch.equal(served.tensor(data)[0][0], transform.from_bytes(data))


def test_exif_orientation_is_applied(served):
    upright = photo(90, 160, 6)  # portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to show
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    assert torch.equal(served.tensor(stored)[0], served.tensor(encode(upright, "PNG"))[0])


def test_large_images_are_shrunk_like_the_cleaning_job(served):
    data = encode(photo(2000, 1500, 7), "JPEG")
    _, decoded = served.tensor(data)
    assert max(decoded.image.size) == SOURCE_SIDE and (decoded.width, decoded.height) == (
        2000,
        1500,
    )


def test_a_model_that_does_not_match_its_sha256_is_not_served(serve_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(serve_model_dir, broken)
    info = json.loads((broken / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**info, "sha256": "0" * 64}))
    with pytest.raises(ModelError, match="sha256"):
        load_model(ServeSettings(model_dir=str(broken)))
    state = handler_module.startup(ServeSettings(model_dir=str(broken)))
    answer = route(post_event("AAAA"), state, ServeSettings(), "req-1")
    assert answer["statusCode"] == 503
    assert json.loads(answer["body"])["error"] == "model_unavailable"
    info_answer = route({"httpMethod": "GET", "path": "/info"}, state, ServeSettings(), "req-2")
    assert info_answer["statusCode"] == 503


def test_an_unexpected_exception_answers_500_with_the_request_id(served, monkeypatch, caplog):
    def explode(data: bytes):
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler_module, "STATE", served)
    monkeypatch.setattr(served, "predict", explode)

    class Context:
        aws_request_id = "req-42"

    with caplog.at_level(logging.ERROR, logger="serve_lambda.handler"):
        answer = handler_module.handler(post_event(encode_jpeg()), Context())
    assert answer["statusCode"] == 500
    assert json.loads(answer["body"]) == {
        "error": "internal_error",
        "message": "unexpected error; it is logged under this request id",
        "request_id": "req-42",
    }
    assert "req-42" in caplog.text and "a bug" in caplog.text  # with the traceback


def encode_jpeg() -> str:
    buffer = io.BytesIO()
    photo(64, 48, 1).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_sam_template_passes_cfn_lint_and_a_broken_copy_fails(tmp_path):
    from cfnlint.api import lint_file

    template = SERVE / "template.yaml"
    assert [str(m) for m in lint_file(template)] == []
    broken = tmp_path / "template.yaml"
    text = template.read_text().replace("PackageType: Image", "PackageType: Container")
    broken.write_text(text.replace("!Ref ImageUri", "!Ref NoSuchParameter"))
    found = [m.message for m in lint_file(broken)]
    assert any("Container" in m for m in found), found
    assert any("NoSuchParameter" in m for m in found), found


def test_sam_build_metadata_builds_the_image_the_deploy_script_builds():
    """`sam build` reads Dockerfile/DockerContext/DockerTag (paths relative to the
    template's folder) and sends the context through docker-py, which honours only the
    context root's .dockerignore: the context must hold every file the image copies and
    nothing else of the checkout (.venv, data, runs)."""
    from cfnlint.decode import decode
    from docker.utils.build import exclude_paths

    template, problems = decode(str(SERVE / "template.yaml"))
    assert not problems, problems
    metadata = template["Resources"]["InferenceFunction"]["Metadata"]
    context = (SERVE / metadata["DockerContext"]).resolve()
    assert context == REPO and (context / metadata["Dockerfile"]) == SERVE / "Dockerfile"
    assert metadata["DockerTag"]
    model_arg = re.search(r"^ARG MODEL_DIR=(\S+)$", dockerfile(), re.M).group(1)
    assert metadata["DockerBuildArgs"]["MODEL_DIR"] == model_arg
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line for line in ignore if line.strip() and not line.startswith("#")]
    sent = exclude_paths(str(REPO), patterns, dockerfile=metadata["Dockerfile"])
    copied = {"requirements.lock", "serve_lambda/requirements.txt", "serve_lambda/handler.py"}
    copied |= set(re.search(r"^COPY (common/.*) common/$", dockerfile(), re.M).group(1).split())
    assert copied <= sent, sorted(copied - sent)
    assert not {p for p in sent if p.split("/")[0] in (".venv", "tests", "pipeline", "train")}
    assert any(re.fullmatch(r"!?out/model/?", p) for p in patterns)  # the staged model


def dockerfile() -> str:
    return (SERVE / "Dockerfile").read_text()


def test_dockerfile_runs_the_entry_point_the_tests_run():
    text = dockerfile()
    assert 'ENTRYPOINT ["python", "-m", "awslambdaric"]' in text
    assert 'CMD ["serve_lambda.handler.handler"]' in text
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2  # multi-stage
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"COPY \$\{MODEL_DIR\}/model\.pt \$\{MODEL_DIR\}/model\.json model/", text)


def test_dockerfile_copies_every_project_module_the_handler_imports(handler_modules):
    copied = re.search(r"^COPY (common/.*) common/$", dockerfile(), re.M).group(1).split()
    needed = {
        "common/__init__.py" if m == "common" else m.replace(".", "/") + ".py"
        for m in handler_modules
        if m.split(".")[0] == "common"
    }
    assert needed <= set(copied), sorted(needed - set(copied))
    assert "COPY serve_lambda/ serve_lambda/" in dockerfile()


def test_serving_requirements_are_pinned_as_in_the_lock():
    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        lock[name.lower().replace("_", "-")] = version
    pins = {}
    for line in (SERVE / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    assert set(pins) == SERVING_DISTRIBUTIONS
    for name, version in pins.items():
        assert lock[name] == version, name


def test_local_command_fails_cleanly_without_the_emulator(tmp_path, capsys):
    args = ["local", str(tmp_path), "--rie", str(tmp_path / "missing-rie")]
    assert serve_main(args) == 2
    assert "aws-lambda-rie" in capsys.readouterr().err
