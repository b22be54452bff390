import pytest
import yaml

from deitkit.config import ConfigError, build_config, dump_yaml, from_dict, list_recipes
from deitkit.build import global_lr


def test_paper_defaults_are_the_dataclass_defaults():
    cfg = build_config("deit-paper")
    assert cfg.optim.opt == "adamw" and cfg.optim.base_lr == 5e-4
    assert cfg.optim.lr_batch_divisor == 512 and cfg.optim.weight_decay == 0.05
    assert cfg.optim.warmup_epochs == 5 and cfg.optim.min_lr == 1e-5 and cfg.optim.sched == "cosine"
    a = cfg.aug
    assert (a.stack, a.rand_augment, a.color_jitter, a.reprob, a.remode) == \
        ("deit", "rand-m9-mstd0.5-inc1", 0.3, 0.25, "pixel")
    assert (a.mixup, a.cutmix, a.switch_prob, a.smoothing, a.repeated_aug) == (0.8, 1.0, 0.5, 0.1, 3)
    assert a.crop == "rrc" and a.interpolation == "bicubic" and a.eval_crop_pct == 0.875
    assert cfg.model.drop_path == 0.1 and cfg.ema.decay == 0.99996
    assert cfg.distill.kind == "hard" and cfg.distill.alpha == 0.5 and cfg.epochs == 300
    assert cfg.data.img_size == 224 and cfg.model.name == "deit_base_distilled_patch16_224"
    # 8 processes x 128 = global batch 1024 -> lr 1e-3 (the paper's DeiT-B setting)
    assert global_lr(cfg, world_size=8) == pytest.approx(1e-3)


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_resolves_and_states_its_facts(name):
    cfg = build_config(name)
    for field in ("description", "command", "hardware", "runtime", "expected_accuracy"):
        assert getattr(cfg.recipe, field), f"recipe {name} lacks recipe.{field}"
    # the resolved config round-trips through YAML
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_overrides_are_typed():
    cfg = build_config("quickstart", overrides=["distill.kind=soft", "distill.tau=3",
                                                "optim.lr=2e-3", "model.overrides={depth: 4}",
                                                "teacher.name=null"])
    assert cfg.distill.kind == "soft" and cfg.distill.tau == 3.0 and isinstance(cfg.distill.tau, float)
    assert cfg.optim.lr == 2e-3 and cfg.model.overrides == {"depth": 4}
    assert cfg.teacher.name is None
    cfg = build_config("quickstart", overrides=["amp=off", "teacher.name=no"])
    assert cfg.amp == "off" and cfg.teacher.name == "no"  # text fields keep the text


def test_yaml_boolean_trap_gets_a_hint(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("amp: off\n")
    with pytest.raises(ConfigError, match="quote the value"):
        build_config("quickstart", str(f))


@pytest.mark.parametrize("override, words", [
    ("distill.kidn=soft", ["unknown key 'distill.kidn'", "distill.kind"]),
    ("nosuch=1", ["unknown key 'nosuch'"]),
    ("epochs=ten", ["'epochs'", "int"]),
    ("epochs=2.5", ["'epochs'", "int"]),
    ("ema.enabled=3", ["'ema.enabled'", "bool"]),
    ("data=3", ["'data'", "mapping"]),
    ("distill.kind=medium", ["distill.kind", "none, soft, hard"]),
    ("distill.alpha=1.5", ["distill.alpha", "[0, 1]"]),
    ("data.batch_size=63", ["even"]),
    ("distill.heads=cls", ["distill.kind=none"]),
    ("epochs", ["key=value"]),
])
def test_config_errors_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        build_config("small-data-cpu", overrides=[override])
    for w in words:
        assert w in str(e.value)


def test_yaml_file_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1.0e-3\n  wd: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*unknown key 'optim.wd'"):
        build_config("quickstart", str(f))
    f.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config("quickstart", str(f))
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("quickstart", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown recipe"):
        build_config("nope")


def test_yaml_is_read_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config("quickstart", str(f))


def test_dotted_overrides_merge_into_dicts_key_by_key():
    # the quickstart recipe sets model.overrides: {depth: 4}
    assert build_config("quickstart").model.overrides["depth"] == 4
    cfg = build_config("quickstart", overrides=["model.overrides.embed_dim=128"])
    assert cfg.model.overrides == {"depth": 4, "embed_dim": 128}  # the recipe's depth is kept
    cfg = build_config("quickstart", overrides=["model.overrides.depth=2",
                                                "model.overrides.embed_dim=128"])
    assert cfg.model.overrides == {"depth": 2, "embed_dim": 128}  # both kept, depth overridden
    cfg = build_config("quickstart", overrides=["model.overrides={num_heads: 2}"])
    assert cfg.model.overrides == {"depth": 4, "num_heads": 2}    # a whole dict merges too
    # and the resolved config (what config.yaml stores) says so
    assert yaml.safe_load(dump_yaml(cfg))["model"]["overrides"] == {"depth": 4, "num_heads": 2}


def test_choices_are_types_checked_once():
    with pytest.raises(ConfigError, match=r"'aug.stack' expects one of deit, v2, light"):
        build_config("quickstart", overrides=["aug.stack=heavy"])
    with pytest.raises(ConfigError, match=r"'amp' expects one of auto, bf16, fp16, off"):
        from_dict({"amp": "fp8"})
