"""The dfd command line, run in-process with click's runner on small random networks."""
from __future__ import annotations

from click.testing import CliRunner
from PIL import Image

from dfd.cli import main

SMALL = ["--face-size", "128", "--ngf", "8", "--k", "8"]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    assert "sample" in result.output and "dictionary" in result.output
    assert "--random-weights" in run("sample", "--help").output


def test_sample_with_a_dictionary_but_no_weights_explains_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["sample", "--dictionary", "d.safetensors", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--dictionary without --weights" in result.output
    assert "latest_net_G.pth" in result.output and "--random-weights" in result.output
    assert "dfd-pd-128" in result.output  # what naming no model at all gives


def test_sample_with_missing_weights_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["sample", "--weights", str(tmp_path / "nope.pth"), "--dictionary",
                                       str(tmp_path / "nope"), "-o", str(tmp_path)])
    assert result.exit_code == 1 and "no such dictionary" in result.output


def test_sample_random_weights_restores_and_labels_bundled_photos(tmp_path):
    result = run("sample", "--random-weights", *SMALL, "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "cmp").glob("*.png")) == [
        "astronaut.png", "biden.png", "grace_hopper.png", "obama.png", "obama2.png", "obama3.png"]
    assert "6 restored" in result.output and "RANDOM WEIGHTS" in result.output
    with Image.open(tmp_path / "restored_imgs" / "astronaut.png") as image:
        assert image.size == (1024, 1024)  # the 512-px photograph, upscaled 2x
        assert "RANDOM WEIGHTS" in image.text["dfd:label"]
    with Image.open(tmp_path / "restored_faces" / "obama_00.png") as face:
        assert face.size == (128, 128)
    assert "6 already done" in run("sample", "--random-weights", *SMALL, "-o", str(tmp_path)).output


def test_dictionary_commands_round_trip(tmp_path):
    single = tmp_path / "d.safetensors"
    assert run("dictionary", "random", str(single), "--k", "4", "--face-size", "128", "--ngf", "8").exit_code == 0
    assert run("dictionary", "convert", str(single), str(tmp_path / "folder")).exit_code == 0
    info = run("dictionary", "info", str(tmp_path / "folder"))
    assert "K=4" in info.output and "mouth 16x13x13" in info.output


def test_restore_refuses_two_inputs_with_the_same_relative_path(tmp_path):
    import shutil

    from .conftest import portrait

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(portrait("grace_hopper.jpg"), tmp_path / name / "face.jpg")
    result = CliRunner().invoke(main, ["restore", str(tmp_path / "a"), str(tmp_path / "b"), "-o",
                                       str(tmp_path / "out"), "--model", "identity"])
    assert result.exit_code == 1 and "would write the same output" in result.output
    assert "common parent folder" in result.output and not (tmp_path / "out").exists()


def test_s_is_the_short_form_of_upscale(tmp_path):
    """GFPGAN's and CodeFormer's users type -s for the output scale."""
    from .conftest import portrait

    result = run("restore", str(portrait("grace_hopper.jpg")), "-o", str(tmp_path), "--model", "identity", "-s", "3")
    assert result.exit_code == 0, result.output
    with Image.open(portrait("grace_hopper.jpg")) as source, Image.open(tmp_path / "restored_imgs" / "grace_hopper.jpg") as out:
        assert out.size == (3 * source.size[0], 3 * source.size[1])


def test_sample_and_restore_declare_each_shared_option_once():
    from dfd.restore_commands import restore, sample

    restore_params = {p.name: p for p in restore.params}
    shared = [p for p in sample.params if p.name in restore_params and p.name != "output"]
    assert {p.name for p in shared} >= {"upscale", "detector", "min_face", "batch_size", "force", "fidelity",
                                        "dict_dtype", "weights"}
    for param in shared:
        assert param.opts == restore_params[param.name].opts and param.help == restore_params[param.name].help
        assert param.default == restore_params[param.name].default, param.name


def test_train_preset_fills_the_options_not_given_and_flags_win(tmp_path):
    from dfdcore.training.presets import PRESETS

    args = ["train", str(tmp_path / "faces.parquet"), "-o", str(tmp_path / "run"), "--dictionary", "d.safetensors",
            "--random-vgg", "--dry-run"]
    plain = run(*args)
    assert plain.exit_code == 0 and "face_size          512" in plain.output and "preset (none)" in plain.output
    preset = run(*args, "--preset", "cpu-128", "--steps", "1500", "--augment", "0.25")
    assert preset.exit_code == 0, preset.output
    resolved = dict(line.split(None, 1) for line in preset.output.splitlines()[1:])
    recipe = PRESETS["cpu-128"]
    assert resolved["face_size"] == "128" and resolved["ngf"] == "8" and resolved["pixel_criterion"] == "psnr"
    assert resolved["residual"] == "True" and resolved["lr"] == str(recipe["lr"])
    assert resolved["steps"] == "1500" and resolved["augment"] == "0.25"  # given flags win over the preset
    unknown = CliRunner().invoke(main, [*args, "--preset", "nope"])
    assert unknown.exit_code != 0 and "cpu-128" in unknown.output
