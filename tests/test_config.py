import glob
import os

import pytest

from data.loader import dataset_dir
from model.config import ConfigError, GPTConfig
from training.config import TrainConfig, build, field_types, parse_args, read_config_file
from training.families import family

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_file_is_data_not_code(tmp_path):
    good = tmp_path / "good.py"
    good.write_text('"""doc"""\n# comment\nn_layer = 3\nlearning_rate = 1e-3\ndataset = "x"\ncompile = False\n')
    assert read_config_file(str(good)) == {"n_layer": 3, "learning_rate": 1e-3, "dataset": "x", "compile": False}
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nn_layer = 3\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_config_file(str(bad))
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("n_layer = __import__('os').system('echo hi')\n")
    with pytest.raises(ConfigError, match="literal"):
        read_config_file(str(sneaky))



@pytest.mark.parametrize("content, message", [(b"\xff\xfen_layer = 3\n", "cannot be read"),
                                              (b"n_layer = {[1]: 2}\n", "line 1: the value must be a literal"),
                                              (b"n_layer = 3\x00\n", "syntax error")])
def test_hostile_config_files_are_config_errors(tmp_path, content, message):
    path = tmp_path / "c.py"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_config_file(str(path))

def test_overrides_are_typed_and_checked(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("n_layer = 3\nbatch_size = 4\n")
    cfg, model_cfg = build(parse_args([str(f), "--n_layer=5", "--compile", "--learning_rate=3e-4",
                                       "--wandb_run_name=abc"]), TrainConfig, GPTConfig)
    assert model_cfg.n_layer == 5 and cfg.batch_size == 4 and cfg.compile is True
    for key in ("--out_dir", "--n_layer", "--learning_rate"):  # a value forgotten, not a string "True"
        with pytest.raises(ConfigError, match=key[2:] + " expects"):
            build(parse_args([key]), TrainConfig, GPTConfig)
    assert cfg.learning_rate == 3e-4 and cfg.wandb_run_name == "abc"
    with pytest.raises(ConfigError, match="valid keys are: .*n_layer"):
        build(parse_args(["--n_layers=5"]), TrainConfig, GPTConfig)
    with pytest.raises(ConfigError, match="n_layer expects a value of type int"):
        build(parse_args(["--n_layer=2.5"]), TrainConfig, GPTConfig)
    with pytest.raises(ConfigError, match="bool"):
        build(parse_args(["--compile=maybe"]), TrainConfig, GPTConfig)
    with pytest.raises(ConfigError, match="init_from"):
        build(parse_args(["--init_from=gpt7"]), TrainConfig, GPTConfig)


@pytest.mark.parametrize("arg, message", [
    ("--learning_rate=-1", "learning_rate must be > 0"), ("--learning_rate=0", "learning_rate must be > 0"),
    ("--min_lr=-1e-4", "min_lr must be >= 0"), ("--beta1=-0.1", "beta1 must be in"), ("--beta2=1.0", "beta2 must be in"),
    ("--weight_decay=-0.1", "weight_decay must be >= 0"), ("--grad_clip=-1", "grad_clip must be >= 0"),
    ("--batch_size=0", "batch_size must be a positive"),
    ("--max_iters=-5", "must not be negative")])
def test_out_of_range_optimizer_values_are_config_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        build(parse_args([arg]), TrainConfig, GPTConfig)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "config", "*.py"))), ids=os.path.basename)
def test_every_shipped_config_builds(path):
    values = parse_args([path])
    cfg, model_cfg = build(values, TrainConfig, family(str(values.get("model_type", "gpt"))).config)
    assert cfg.max_iters > 0 and model_cfg.n_embd % model_cfg.n_head == 0


def test_help_of_train_and_sample_lists_every_key_with_its_default(capsys):
    import sample
    import train
    from training.families import FAMILIES
    train.main(["config/bert_shakespeare_char.py", "--help"])  # nothing is read or trained
    text = capsys.readouterr().out
    assert text.startswith("Train a headscope model.")
    for cls in (TrainConfig, GPTConfig):
        for key in field_types(cls):  # a nested config's fields under their flat keys (hard_attention_eval)
            assert f"  --{key}=" in text, key
    assert "  --out_dir=out\n" in text and "  --data_dir=''\n" in text and "  --mlp_hidden=None\n" in text
    for name in FAMILIES:
        assert name == "gpt" or f"model_type={name}: gpt's model keys" in text
    assert "also type_vocab_size" in text and "cell" in text
    sample.main(["-h"])
    text = capsys.readouterr().out
    assert text.startswith("Sample text from a trained model")
    assert "  --start='\\n'\n" in text and "  --top_k=200\n" in text and "  --decoding=greedy\n" in text


def test_vocab_size_is_refused_in_one_line():
    import train
    for argv in (["--vocab_size=50304"], ["--model_type=bert", "--vocab_size=100"]):
        with pytest.raises(ConfigError, match="vocab_size comes from the dataset.*drop --vocab_size"):
            train.load_config(argv)


def test_config_files_may_hold_literal_arithmetic(tmp_path):
    path = tmp_path / "nanogpt_style.py"
    path.write_text("batch_size = 5 * 8\nmax_iters = 2000 * 2\nlearning_rate = 6e-4 / 10\nwarmup_iters = -(-7)\n"
                    "gradient_accumulation_steps = 2 ** 3\nlr_decay_iters = 10 // 3 + 1 - 1 % 1\n"
                    "dropout = 0.1 + 0.1\nwandb_run_name = 'mini' + '-gpt'\nsizes = [2 * 3, (1 + 1)]\n")
    values = read_config_file(str(path))
    assert values == {"batch_size": 40, "max_iters": 4000, "learning_rate": 6e-4 / 10, "warmup_iters": 7,
                      "gradient_accumulation_steps": 8, "lr_decay_iters": 4, "dropout": 0.1 + 0.1,
                      "wandb_run_name": "mini-gpt", "sizes": [6, 2]}
    for code in ("n = 10 ** 10 ** 10\n", "n = 'a' * 10 ** 9\n", "n = 1 / 0\n", "n = x * 2\n", "n = len('ab') * 2\n",
                 "n = (lambda: 1)() + 1\n", "n = [1] * 10 ** 9\n"):
        path.write_text(code)
        with pytest.raises(ConfigError, match="line 1"):
            read_config_file(str(path))


def test_the_built_in_dataset_is_named_for_the_plays_and_its_old_name_still_works():
    assert TrainConfig().dataset == "shakespeare_plays_char"
    assert dataset_dir("shakespeare_plays_char") == dataset_dir("shakespeare_char")  # old runs and checkpoints
    assert dataset_dir("shakespeare_plays") == dataset_dir("shakespeare")
    assert dataset_dir("x", "/some/dir") == "/some/dir"
    for path in glob.glob(os.path.join(REPO, "config", "*.py")):  # no config names the plays as tiny shakespeare
        assert read_config_file(path).get("dataset") not in ("shakespeare_char", "shakespeare"), path
    assert "NOT nanoGPT's tiny shakespeare" in open(os.path.join(REPO, "config", "shakespeare_char_cpu.py")).read()
