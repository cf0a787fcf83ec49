"""Pretrained loading: sources registry, local paths, file:// URLs through the cache, hash and
size checks, truncated files, malicious pickles (refused, payload never runs), strict key
reports and classifier re-initialisation. Everything offline, on a tiny arch."""

import logging
import os
import pickle

import pytest
import torch

import fbnet_zoo
from fbnet_zoo import checkpoints
from fbnet_zoo.checkpoints import CheckpointError, fetch, load_pretrained, read_state_dict, register_sources

TINY = {"name": "Tiny-Ckpt", "input_size": 32, "stages": [
    [{"type": "conv", "out_channels": 8, "stride": 2, "kernel": 3, "act": "hswish"}],
    [{"type": "ir", "out_channels": 8, "expansion": 1, "kernel": 3}],
    [{"type": "ir", "out_channels": 16, "stride": 2, "expansion": 4, "kernel": 5, "se": True},
     {"type": "ir", "out_channels": 16, "repeats": 2, "expansion": 3, "se": True}],
    [{"type": "ir_pool", "out_channels": 64, "expansion": 6}]]}


def _trained(num_classes=10, seed=0):
    torch.manual_seed(seed)
    model = fbnet_zoo.build_model(TINY, num_classes=num_classes)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn_like(p).abs() + 0.1)
    return model.eval()


def _same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FBNET_ZOO_CACHE", str(d))
    return d


@pytest.fixture
def saved(tmp_path):
    model = _trained()
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _cache_files(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_local_path(saved):
    src, path = saved
    model = fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(path))
    assert _same_weights(model, src)


def test_file_url_goes_through_the_cache_and_then_works_without_the_source(saved, cache):
    src, path = saved
    url = path.as_uri()
    a = fbnet_zoo.build_model(TINY, num_classes=10, pretrained=url)
    assert _same_weights(a, src)
    files = _cache_files(cache)
    assert len(files) == 1 and files[0].endswith("-tiny.pth")       # complete file only, no temp left
    os.unlink(path)                                                   # the source is gone: the cache serves
    b = fbnet_zoo.build_model(TINY, num_classes=10, pretrained=url)
    assert _same_weights(b, src)


def test_no_source_hint_offers_only_siblings_with_classifier_weights():
    with pytest.raises(CheckpointError, match=r"sibling FBNetV3-B-timm has weights"):
        checkpoints.get_source("FBNetV3-B")
    # FBNetV3-A's only siblings with sources are the authors' whole COCO detectors, which
    # build_model cannot load: the hint used to suggest build_model('FBNetV3-A-d2go', pretrained=True)
    with pytest.raises(CheckpointError) as info:
        checkpoints.get_source("FBNetV3-A")
    assert "sibling" not in str(info.value) and "or pass a local path or URL" in str(info.value)


def test_registered_source_with_verified_hash_and_size(saved, cache, tmp_path):
    src, path = saved
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    register_sources({"model": "Tiny-Ckpt", "default": "local", "sources": {
        "local": {"url": path.as_uri(), "sha256": digest, "size": path.stat().st_size, "converter": "ours"}}})
    model = fbnet_zoo.build_model(TINY, num_classes=10, pretrained=True)
    assert _same_weights(model, src)
    assert "local" in checkpoints.list_sources("tiny_ckpt")


def test_hash_mismatch_is_an_error_and_leaves_the_cache_clean(saved, cache):
    _, path = saved
    with pytest.raises(CheckpointError, match="sha256 .* does not match the expected 0{64}"):
        fetch(path.as_uri(), sha256="0" * 64, progress=False)
    assert _cache_files(cache) == []
    with pytest.raises(CheckpointError, match="size .* expected 12"):
        fetch(path.as_uri(), size=12, progress=False)
    assert _cache_files(cache) == []


def test_a_cached_file_that_no_longer_matches_its_hash_is_fetched_again(saved, cache):
    _, path = saved
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    local = fetch(path.as_uri(), sha256=digest, progress=False)
    with open(local, "r+b") as f:
        f.write(b"garbage")
    again = fetch(path.as_uri(), sha256=digest, progress=False)
    assert again == local and hashlib.sha256(open(local, "rb").read()).hexdigest() == digest


def test_truncated_file_is_a_clear_error_and_is_removed_from_the_cache(saved, cache, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated") as e:
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=cut.as_uri())
    assert "removed from the cache" in str(e.value)
    assert _cache_files(cache) == []
    with pytest.raises(CheckpointError, match=r"cut\.pth: corrupted or truncated"):  # a local path: left in place
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(cut))
    assert cut.exists()


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, cache, zipfile):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    state = {"payload": _Payload(str(marker)), "stages.0.0.conv.weight": torch.zeros(8, 3, 3, 3)}
    torch.save(state, evil, _use_new_zipfile_serialization=zipfile)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused") as e:
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(evil))
    assert "weights_only=True" in str(e.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):               # through the cache: refused and removed
        load_pretrained(fbnet_zoo.build_model(TINY, num_classes=10), evil.as_uri(), progress=False)
    assert not marker.exists()
    assert _cache_files(cache) == []
    # sanity: the payload is live -- plain unpickling of the same object creates the marker
    pickle.loads(pickle.dumps(_Payload(str(marker)))).close()
    assert marker.exists()


def test_num_classes_change_drops_and_reinitialises_the_classifier(saved, caplog):
    src, path = saved
    with caplog.at_level(logging.INFO, logger="fbnet_zoo.checkpoints"):
        model = fbnet_zoo.build_model(TINY, num_classes=3, pretrained=str(path))
    assert "10-class classifier" in caplog.text and "model has 3 classes" in caplog.text
    assert "re-initialised" in caplog.text
    assert model.classifier.fc.weight.shape == (3, 64)
    assert _same_weights(model, src, skip=("classifier.",))
    assert torch.all(model.classifier.fc.bias == 0)
    headless = fbnet_zoo.build_model(TINY, num_classes=0, pretrained=str(path))
    assert headless.classifier is None and _same_weights(headless, src, skip=("classifier.",))


def test_strict_loading_names_missing_unexpected_and_mismatched_keys(tmp_path):
    sd = _trained().state_dict()
    del sd["stages.2.1.se.reduce.weight"]
    sd["stages.9.0.conv.weight"] = torch.zeros(1)
    sd["stages.2.0.pwl.conv.weight"] = torch.zeros(17, 32, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(path))
    msg = str(e.value)
    assert "missing 1 key(s): stages.2.1.se.reduce.weight" in msg
    assert "unexpected 1 key(s): stages.9.0.conv.weight" in msg
    assert "stages.2.0.pwl.conv.weight (checkpoint (17, 32, 1, 1), model (16, 32, 1, 1))" in msg
    model = fbnet_zoo.build_model(TINY, num_classes=10)
    result = load_pretrained(model, str(path), strict=False)
    assert result.missing == ["stages.2.1.se.reduce.weight"] and len(result.mismatched) == 1


def test_wrong_architecture_is_reported(saved):
    _, path = saved
    other = {**TINY, "name": "Tiny-Other", "stages": TINY["stages"][:2] + [[{"type": "ir_pool", "out_channels": 64,
                                                                           "expansion": 6}]]}
    with pytest.raises(CheckpointError, match="does not fit Tiny-Other.*wrong architecture"):
        fbnet_zoo.build_model(other, num_classes=10, pretrained=str(path))


def test_wrapped_and_prefixed_state_dicts_and_safetensors(tmp_path):
    src = _trained()
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "iteration": 5}, path)
    assert _same_weights(fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(path)), src)
    st = pytest.importorskip("safetensors.torch", reason="safetensors is optional")
    spath = tmp_path / "tiny.safetensors"
    st.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(spath))
    assert _same_weights(fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(spath)), src)


def test_unknown_sources_and_paths_are_clear_errors():
    with pytest.raises(CheckpointError, match="FBNetV3-B-timm"):
        fbnet_zoo.build_model("FBNetV3-B", pretrained=True)             # points to the variant with weights
    with pytest.raises(CheckpointError, match=r"'nope' is neither a source of 'FBNetV3-B-timm' \(\['timm', 'timm-hf'\]\)"):
        fbnet_zoo.build_model("FBNetV3-B-timm", pretrained="nope")
    with pytest.raises(CheckpointError, match="not an existing path or a URL"):
        fbnet_zoo.build_model({**TINY, "name": "Tiny-No-Sources"}, pretrained="/no/such/file.pth")


def test_sources_registry_is_validated_data():
    for name in ("FBNetV3-B-timm", "FBNetV3-D-timm", "FBNetV3-G-timm"):
        src = checkpoints.get_source(name)
        assert src.name == "timm" and src.converter == "timm" and src.url.startswith("https://")
        assert src.sha256 is None                                        # never invented
        assert {p["input_size"] for p in src.published} and all("top1" in p for p in src.published)
        fbnet_zoo.get_spec(src.model)                                    # each source names a zoo model
    with pytest.raises(CheckpointError, match=r"Bad\.sources\.x\.format: 'pickle' is not one of"):
        register_sources({"model": "Bad", "sources": {"x": {"url": "file:///x", "format": "pickle"}}})
    with pytest.raises(CheckpointError, match=r"Bad\.sources\.x\.sha256"):
        register_sources({"model": "Bad", "sources": {"x": {"url": "file:///x", "sha256": "abc"}}})


def test_read_state_dict_rejects_non_state_dicts(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(str(path))


def test_d2go_detection_sources_are_data_for_the_detection_converter():
    for model, default in (("FBNetV3-A-d2go", "faster_rcnn_c4"), ("FBNetV3-G-d2go", "faster_rcnn_fpn")):
        src = checkpoints.get_source(model)
        assert src.name == default and src.converter == "d2go_detection" and src.sha256 is None
        assert src.url.startswith("https://mobile-cv.s3-us-west-2.amazonaws.com/d2go/models/")
        assert all("box_ap" in p for p in src.published)


def test_a_source_whose_converter_is_not_registered_fails_clearly(saved, cache):
    _, path = saved
    register_sources({"model": "Tiny-Conv", "sources": {"x": {"url": path.as_uri(), "converter": "not_yet"}}})
    with pytest.raises(CheckpointError, match="'not_yet' is not one of .*register_converter"):
        fbnet_zoo.build_model({**TINY, "name": "Tiny-Conv"}, num_classes=10, pretrained="x")


def test_timm_keyed_file_is_detected_and_converted(tmp_path):
    timm = pytest.importorskip("timm", reason="writes a timm-keyed checkpoint")
    ref = timm.create_model("fbnetv3_b", num_classes=5).eval()
    path = tmp_path / "timm_b.pth"
    torch.save(ref.state_dict(), path)
    model = fbnet_zoo.build_model("FBNetV3-B-timm", num_classes=5, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- hostile values and files (issue 16.11)

def _bad_variants():
    sd = _trained().state_dict()
    nan, inf, neg, ints = dict(sd), dict(sd), dict(sd), dict(sd)
    nan["stages.2.0.dw.conv.weight"] = sd["stages.2.0.dw.conv.weight"].clone().index_fill_(0, torch.tensor([1]),
                                                                                           float("nan"))
    inf["classifier.fc.bias"] = sd["classifier.fc.bias"].clone().fill_(float("inf"))
    neg["stages.1.0.dw.bn.running_var"] = -sd["stages.1.0.dw.bn.running_var"]
    ints["stages.0.0.conv.weight"] = sd["stages.0.0.conv.weight"].round().to(torch.int64)
    return [("nan", nan, r"non-finite values \(NaN/inf\) in 1 tensor\(s\): stages\.2\.0\.dw\.conv\.weight"),
            ("inf", inf, r"non-finite values \(NaN/inf\) in 1 tensor\(s\): classifier\.fc\.bias"),
            ("neg_var", neg, r"negative BatchNorm running_var .* stages\.1\.0\.dw\.bn\.running_var \(min -"),
            ("int", ints, r"integer dtype .* stages\.0\.0\.conv\.weight \(torch\.int64, model torch\.float32\)")]


@pytest.mark.parametrize("case", range(4), ids=["nan", "inf", "neg_var", "int"])
def test_nan_inf_negative_variance_and_integer_weights_are_refused_unless_opted_out(tmp_path, case):
    _, sd, pattern = _bad_variants()[case]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=pattern) as e:
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(path))
    assert str(path) in str(e.value) and "check_values=False" in str(e.value)
    model = fbnet_zoo.build_model(TINY, num_classes=10)
    load_pretrained(model, str(path), check_values=False)               # the caller's explicit choice
    key = next(k for k in sd if not torch.equal(sd[k].float(), _trained().state_dict()[k].float()))
    assert torch.equal(model.state_dict()[key].float().nan_to_num(), sd[key].float().nan_to_num())


def test_classifier_with_the_right_class_count_but_another_input_width_is_a_shape_error(tmp_path):
    sd = _trained().state_dict()
    sd["classifier.fc.weight"] = torch.randn(10, 48)                    # 10 classes, but from a 48-wide backbone
    path = tmp_path / "other_width.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"classifier\.fc\.weight \(checkpoint \(10, 48\), model \(10, 64\)\)"):
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(path))
    sd["classifier.fc.weight"] = torch.randn(3, 48)                     # another class count and another width
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"classifier\.fc\.weight \(checkpoint \(3, 48\), model \(10, 64\)\)"):
        fbnet_zoo.build_model(TINY, num_classes=10, pretrained=str(path))


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"hello, I am a text file\n", b"PK\x05\x06" + bytes(18)])
def test_random_bytes_are_not_a_checkpoint_rather_than_code(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"junk\.pth: (not a checkpoint|corrupted or truncated)") as e:
        read_state_dict(str(path))
    assert "could run code" not in str(e.value) and "refused" not in str(e.value)
    if content[:2] != b"PK":
        assert "not a zip/pickle torch file" in str(e.value) or "empty" in str(e.value)


def test_a_garbled_pickle_inside_a_torch_zip_is_corruption_not_code(tmp_path):
    import zipfile

    good = tmp_path / "good.pth"
    torch.save(_trained().state_dict(), good)
    bad = tmp_path / "garbled.pth"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, b"\x80\x02\xff\xfe\xfd" + data[5:] if item.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError, match="corrupted or truncated") as e:
        read_state_dict(str(bad))
    assert "could run code" not in str(e.value)
    # a plain pickle.dump of tensors (protocol 4: an opcode torch's safe loader lacks): one line, was torch's 7
    plain = tmp_path / "plain.pkl"
    with open(plain, "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(2)}}, f, protocol=4)
    with pytest.raises(CheckpointError, match=r"plain\.pkl: .*not written by torch.save .*Unsupported operand") as e:
        read_state_dict(str(plain))
    assert "\n" not in str(e.value) and "could run code" not in str(e.value)


def test_a_corrupt_cache_entry_is_fetched_again_and_the_first_load_succeeds(saved, cache):
    src, path = saved
    url = path.as_uri()
    fetch(url, progress=False)
    (cached,) = cache.iterdir()
    size = cached.stat().st_size
    cached.write_bytes(os.urandom(size))                                # same length: only loading can tell
    model = fbnet_zoo.build_model(TINY, num_classes=10, pretrained=url)  # the first load after the damage
    assert _same_weights(model, src)
    assert cached.read_bytes() == path.read_bytes()


def test_corrupt_entry_in_a_read_only_cache_is_a_clear_error_naming_file_dir_and_fix(saved, monkeypatch):
    from unprivileged import remove_tree, run_unprivileged, shared_tmp_dir

    src, path = saved
    root = shared_tmp_dir()
    try:
        source = os.path.join(root, "tiny.pth")
        with open(source, "wb") as f:
            f.write(path.read_bytes())
        os.chmod(source, 0o644)
        cache_dir = os.path.join(root, "cache")
        monkeypatch.setenv("FBNET_ZOO_CACHE", cache_dir)
        url = "file://" + source
        cached = fetch(url, progress=False)
        os.chmod(cached, 0o644)
        with open(cached, "r+b") as f:                                   # damaged on disk
            f.write(b"\x00" * 64)
        os.chmod(cache_dir, 0o555)

        def load():
            fbnet_zoo.build_model(TINY, num_classes=10, pretrained=url)

        with pytest.raises(CheckpointError) as e:
            run_unprivileged(load)
        msg = str(e.value)
        assert cached in msg and f"the cache dir {cache_dir} is not writable" in msg and "FBNET_ZOO_CACHE" in msg
        os.chmod(cache_dir, 0o755)
        with open(cached, "wb") as f:                                    # an intact entry: a read-only cache serves it
            f.write(path.read_bytes())
        os.chmod(cache_dir, 0o555)
        assert run_unprivileged(lambda: _same_weights(fbnet_zoo.build_model(TINY, num_classes=10,
                                                                            pretrained=url), src))
        other = "file://" + os.path.join(root, "other.pth")              # a download into a read-only cache
        with pytest.raises(CheckpointError, match=r"cannot download: the cache dir .* is not writable: set FBNET_ZOO_CACHE"):
            run_unprivileged(lambda: fetch(other, progress=False))
    finally:
        remove_tree(root)
