"""`clif concepts export` then `clif concepts import` gives back the same concept file, bit for bit."""

from __future__ import annotations

from clif_core.cli import main
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.models.tiny import build_tiny_model
from tests.helpers.concept_files import assert_same, make_concept_file


def test_export_import_round_trip_through_the_cli(tmp_path, capsys):
    original = make_concept_file(build_tiny_model("sd1", 0), seed=5)
    save_concept_file(original, tmp_path / "set.safetensors")
    assert main(["concepts", "export", str(tmp_path / "set.safetensors"), str(tmp_path / "models")]) == 0
    embeddings = sorted((tmp_path / "models" / "embeddings").glob("*.safetensors"))
    assert [p.stem for p in embeddings] == ["alice", "bob"]
    args = ["concepts", "import", str(tmp_path / "back.safetensors"),
            "--lora", str(tmp_path / "models" / "loras" / "set.safetensors")]
    for p in embeddings:
        args += ["--embedding", str(p)]
    assert main(args) == 0
    assert_same(load_concept_file(tmp_path / "back.safetensors"), original)
    assert main(["concepts", "inspect", str(tmp_path / "back.safetensors")]) == 0
    assert "<alice>" in capsys.readouterr().out


def test_cli_reports_a_bad_file_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    assert main(["concepts", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and "Traceback" not in err
