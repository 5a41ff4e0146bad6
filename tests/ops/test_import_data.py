"""Where prepare reads raw data, and `pspnet import-data`: real DVC in a temp git repo."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from pspnet.config import Params, parse_params
from pspnet.ops.import_data import import_data, raw_inputs, resolve_input
from pspnet.errors import PERMANENT_EXIT_CODES, DataError, PspnetError
from tests.integration.conftest import run


def _params(location: str, name: str = "camvid", **source: object) -> Params:
    return parse_params({"data": {"source": {"name": name, "location": location, **source}}})


def _repo(path: Path) -> Path:
    path.mkdir(parents=True)
    run(["git", "init", "-q"], path)
    run(["dvc", "init", "-q"], path)
    (path / "data/raw").mkdir(parents=True)
    (path / "data/raw/README.md").write_text("raw data\n")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "init"], path)
    return path


def _dataset(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_locations_inside_raw_are_read_in_place_others_are_imported(tmp_path: Path) -> None:
    root = tmp_path / "project"
    inside = raw_inputs(_params("data/raw/mine"), root)[0]
    assert not inside.imported and inside.path == root / "data/raw/mine"
    outside = raw_inputs(_params("../elsewhere/CamVid"), root)[0]
    assert outside.imported and outside.path == root / "data/raw/camvid"
    url = raw_inputs(_params("s3://bucket/ade", name="ade20k"), root)[0]
    assert url.imported and url.path == root / "data/raw/ade20k"
    voc = raw_inputs(_params("/data/VOC2012", name="voc", sbd_location="https://host/sbd.tgz"), root)
    assert [(i.field, i.path.name) for i in voc] == [("data.source.location", "voc"), ("data.source.sbd_location", "sbd")]
    assert raw_inputs(parse_params({}), root) == []  # synthetic needs no files


def test_an_outside_location_not_imported_yet_says_which_command_imports_it(tmp_path: Path) -> None:
    item = raw_inputs(_params("/data/CamVid"), tmp_path)[0]
    with pytest.raises(DataError, match=r"data\.source\.location: /data/CamVid is outside .* run `pspnet import-data`"):
        resolve_input(item, tmp_path)


@pytest.mark.integration
def test_import_then_update_versions_the_raw_data(tmp_path: Path) -> None:
    root = _repo(tmp_path / "project")
    source = _dataset(tmp_path / "CamVid", {"train/a.png": "a", "trainannot/a.png": "a"})
    params = _params(str(source))

    first = import_data(params, root)["inputs"][0]
    assert first["action"] == "dvc import-url" and first["changed"] and first["version"]
    assert (root / "data/raw/camvid/train/a.png").read_text() == "a"
    record = yaml.safe_load((root / "data/raw/camvid.dvc").read_text())
    assert record["frozen"] is True and Path(root / "data/raw", record["deps"][0]["path"]).resolve() == source.resolve()
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=root, capture_output=True, text=True).stdout
    assert set(staged.split()) == {"data/raw/camvid.dvc", "data/raw/.gitignore"}  # ready to commit
    assert resolve_input(raw_inputs(params, root)[0], root) == root / "data/raw/camvid"

    same = import_data(params, root)["inputs"][0]
    assert same["action"] == "dvc update" and not same["changed"]

    _dataset(source, {"train/b.png": "b", "trainannot/b.png": "b"})
    updated = import_data(params, root)["inputs"][0]
    assert updated["action"] == "dvc update" and updated["changed"] and updated["version"] != first["version"]
    assert (root / "data/raw/camvid/train/b.png").read_text() == "b"


@pytest.mark.integration
def test_a_moved_location_is_refused_until_reimported(tmp_path: Path) -> None:
    root = _repo(tmp_path / "project")
    old = _dataset(tmp_path / "old", {"train/a.png": "a"})
    new = _dataset(tmp_path / "new", {"train/z.png": "z"})
    import_data(_params(str(old)), root)
    with pytest.raises(DataError, match=r"was imported from .*old but params\.yaml now says .*new.*pspnet import-data"):
        resolve_input(raw_inputs(_params(str(new)), root)[0], root)
    result = import_data(_params(str(new)), root)["inputs"][0]
    assert result["action"] == "dvc import-url"
    assert sorted(p.name for p in (root / "data/raw/camvid/train").iterdir()) == ["z.png"]


@pytest.mark.integration
def test_data_copied_into_raw_is_tracked_with_dvc_add(tmp_path: Path) -> None:
    root = _repo(tmp_path / "project")
    _dataset(root / "data/raw/mine", {"images/train/a.png": "a"})
    result = import_data(_params("data/raw/mine", name="folder"), root)["inputs"][0]
    assert result["action"] == "dvc add" and result["version"]
    assert (root / "data/raw/mine.dvc").is_file()


@pytest.mark.integration
def test_a_location_that_does_not_exist_is_named_before_dvc_runs(tmp_path: Path) -> None:
    root = _repo(tmp_path / "project")
    with pytest.raises(DataError, match=r"data\.source\.location: .*/nowhere/CamVid does not exist\. Fix: set"):
        import_data(_params(str(tmp_path / "nowhere/CamVid")), root)
    assert not (root / "data/raw/camvid.dvc").exists()


@pytest.mark.integration
def test_a_fresh_clone_pulls_the_tracked_raw_data_from_the_dvc_remote(tmp_path: Path) -> None:
    root = _repo(tmp_path / "project")
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], root)
    _dataset(root / "data/raw/mine", {"images/train/a.png": "a"})
    params = _params("data/raw/mine", name="folder")
    first = import_data(params, root)["inputs"][0]
    run(["dvc", "push"], root)
    # What a new machine has: the .dvc file from git, no data, an empty cache.
    shutil.rmtree(root / "data/raw/mine")
    shutil.rmtree(root / ".dvc/cache")
    again = import_data(params, root)["inputs"][0]
    assert again["action"] == "dvc pull" and again["version"] == first["version"] and not again["changed"]
    assert (root / "data/raw/mine/images/train/a.png").read_text() == "a"

    # A remote that answers but lacks the copy: a data error (no retry helps), saying what to do.
    shutil.rmtree(root / "data/raw/mine")
    shutil.rmtree(root / ".dvc/cache")
    shutil.rmtree(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    with pytest.raises(DataError, match=r"data/raw/mine\.dvc: its data is neither in the local DVC cache nor on a DVC remote"):
        import_data(params, root)

    # A remote that cannot be reached (a share not mounted, a server that refuses): a transient
    # error (the flow retries it) naming the remote and why; nothing is changed.
    (tmp_path / "remote").rmdir()
    with pytest.raises(PspnetError, match=r"remote 'store' \(.*remote\) is unreachable: its folder .* does not exist") as err:
        import_data(params, root)
    assert not isinstance(err.value, DataError) and err.value.exit_code not in PERMANENT_EXIT_CODES
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    run(["dvc", "remote", "modify", "store", "url", f"http://127.0.0.1:{closed_port}/store"], root)
    with pytest.raises(PspnetError, match=rf"unreachable: cannot connect to 127\.0\.0\.1:{closed_port} \(Connection refused\)"):
        import_data(params, root)
    assert not (root / "data/raw/mine").exists() and (root / "data/raw/mine.dvc").is_file()


def _cached_bytes(root: Path) -> list[bytes]:
    cache = root / ".dvc" / "cache"
    return [p.read_bytes() for p in cache.rglob("*") if p.is_file()] if cache.is_dir() else []


@pytest.mark.integration
def test_a_link_out_of_the_source_is_refused_before_anything_is_imported_or_cached(tmp_path: Path) -> None:
    """A dataset carrying a link to a file of the user's (here a 'key'): import-url (a folder
    elsewhere), update (a link added later) and dvc add (a folder inside data/raw) all refuse it,
    naming the link; the target's bytes reach neither data/raw nor the DVC cache."""
    root = _repo(tmp_path / "project")
    secret = tmp_path / "home" / "id_key"
    secret.parent.mkdir()
    secret.write_text("SECRET-KEY-BYTES")
    source = _dataset(tmp_path / "CamVid", {"train/a.png": "a", "trainannot/a.png": "a"})
    (source / "train" / "b.png").symlink_to(secret)
    (source / "trainannot" / "b.png").symlink_to(source / "trainannot" / "a.png")  # a link that stays inside: fine
    link = source / "train" / "b.png"
    with pytest.raises(DataError, match=rf"{link}: a symbolic link to {secret}, outside the source folder .*1 such link"):
        import_data(_params(str(source)), root)
    assert not (root / "data/raw/camvid").exists() and not (root / "data/raw/camvid.dvc").exists()
    assert b"SECRET-KEY-BYTES" not in _cached_bytes(root)

    link.unlink()
    import_data(_params(str(source)), root)  # clean now: imported
    (source / "train" / "c.png").symlink_to(secret)
    with pytest.raises(DataError, match=r"train/c\.png: a symbolic link to .*id_key"):
        import_data(_params(str(source)), root)  # the update is refused too
    assert not (root / "data/raw/camvid/train/c.png").exists()

    inside = _dataset(root / "data/raw/mine", {"images/train/a.png": "a"})
    (inside / "images" / "train" / "k.png").symlink_to(secret)
    with pytest.raises(DataError, match=r"k\.png: a symbolic link to .*id_key"):
        import_data(_params("data/raw/mine", name="folder"), root)
    assert not (root / "data/raw/mine.dvc").exists()
    assert b"SECRET-KEY-BYTES" not in _cached_bytes(root)


@pytest.mark.integration
def test_an_import_survives_dvc_exp_run_under_the_projects_gitignore(tmp_path: Path) -> None:
    """`pspnet ablation` imports, then runs `dvc exp run` with the import still uncommitted: DVC
    must see the .dvc file (the project's .gitignore must not hide data/ from its matcher), or
    the experiment's checkout deletes the imported data as an unused link."""
    root = _repo(tmp_path / "project")
    shutil.copy(Path(__file__).resolve().parents[2] / ".gitignore", root / ".gitignore")
    (root / "dvc.yaml").write_text(
        "stages:\n  listing:\n    cmd: ls data/raw/camvid/train > listing.txt\n"
        "    deps: [data/raw]\n    outs: [listing.txt]\n"
    )
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project gitignore and a stage reading the raw data"], root)
    source = _dataset(tmp_path / "CamVid", {"train/a.png": "a", "trainannot/a.png": "a"})
    import_data(_params(str(source)), root)

    run(["dvc", "exp", "run", "-n", "reads-raw"], root)
    assert (root / "data/raw/camvid/train/a.png").read_text() == "a"
    assert (root / "listing.txt").read_text().split() == ["a.png"]
