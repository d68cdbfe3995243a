import glob
import os

import pytest

import train
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
    assert build(parse_args(["--init_from=gpt7"]), TrainConfig, GPTConfig)[0].init_from == "gpt7"  # reads no disk
    with pytest.raises(ConfigError, match="init_from"):  # where the run starts does
        train.read_config(["--init_from=gpt7"])


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


def test_a_rule_table_checks_every_field_with_choices_read_from_the_registries():
    from model.attention import WEIGHTINGS, Softmax
    from model.rules import check_fields, number, one_of, size

    class Options:  # a config with a table of its own: the checker reads nothing else
        rules = {"heads": size(), "rate": number("must be in [0, 1)", at_least=0, below=1), "kind": one_of(("a", "b"))}

        def __init__(self, **values):
            self.__dict__.update({"heads": 2, "rate": 0.5, "kind": "a", **values})

    check_fields(Options())
    for change, message in (({"heads": 2.0}, "heads must be a positive integer, got 2.0."),
                            ({"rate": float("nan")}, "rate must be in [0, 1), got nan."),
                            ({"rate": True}, "rate must be in [0, 1), got True."),
                            ({"kind": ["a"]}, "kind must be one of a, b, got ['a'].")):
        with pytest.raises(ConfigError) as e:
            check_fields(Options(**change))
        assert str(e.value) == message
    with pytest.raises(ConfigError, match="opt_heads must be"):  # a nested config's flat key names it
        check_fields(Options(heads=0), prefix="opt_")
    WEIGHTINGS["plain_test"] = Softmax  # a weighting registered after the config module loaded
    try:
        assert GPTConfig(attn_weighting="plain_test").attn_weighting == "plain_test"
    finally:
        del WEIGHTINGS["plain_test"]
    with pytest.raises(ConfigError, match="attn_weighting must be one of softmax, hard, got 'plain_test'"):
        GPTConfig(attn_weighting="plain_test")


def test_no_config_constructor_reads_the_disk(monkeypatch):
    from training.config import SampleConfig

    def no_disk(*args):
        raise AssertionError("a config constructor read the disk")

    for name in ("exists", "isdir", "isfile"):
        monkeypatch.setattr(os.path, name, no_disk)
    assert TrainConfig(init_from="some/folder").init_from == "some/folder"
    assert SampleConfig(init_from="gpt5").init_from == "gpt5"  # refused where sample.py starts, not here


def test_gradient_accumulation_not_given_is_none_and_the_run_derives_it(monkeypatch):
    assert TrainConfig().gradient_accumulation_steps is None
    assert build(parse_args(["--gradient_accumulation_steps=None"]), TrainConfig)[0].gradient_accumulation_steps is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train.accumulation(TrainConfig(), None, resumed=False) == 2  # one micro-batch per process
    assert train.accumulation(TrainConfig(gradient_accumulation_steps=4), 4, resumed=False) == 4  # given: global
    assert train.accumulation(TrainConfig(gradient_accumulation_steps=6), None, resumed=True) == 6  # a resume keeps it
    with pytest.raises(ConfigError, match="this run was trained with gradient_accumulation_steps=3"):
        train.accumulation(TrainConfig(gradient_accumulation_steps=3), None, resumed=True)
    assert train.accumulation(TrainConfig(gradient_accumulation_steps=3, eval_only=True), None, resumed=True) == 2
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps \(3\) counts micro-batches over all 2"):
        train.accumulation(TrainConfig(gradient_accumulation_steps=3), 3, resumed=True)  # given on a resume


def test_one_place_refuses_what_the_family_would_ignore():
    from training.config import SampleConfig
    from training.families import refuse_ignored

    for given, model_type, message in (({"cell": "gru"}, "seq2seq", "cell is an option of model_type=rnn, not of "
                                                                       "model_type=seq2seq; drop --cell"),
                                       ({"doc_mask": "True"}, "rnn", "doc_mask is an option of model_type=gpt or bert"),
                                       ({"batch_align": "doc"}, "seq2seq", "batch_align is an option of model_type=gpt")):
        with pytest.raises(ConfigError, match=message):
            refuse_ignored(given, model_type, TrainConfig)
    refuse_ignored({"batch_align": "window", "doc_mask": False, "dropout": "0.1"}, "seq2seq", TrainConfig)  # defaults
    with pytest.raises(ConfigError, match="--decoding is for an encoder-decoder checkpoint and out holds a GPT"):
        refuse_ignored({"decoding": "beam"}, "gpt", SampleConfig, source="out")
    refuse_ignored({"decoding": "greedy", "ablate": "0.1"}, "gpt", SampleConfig, source="out")  # default; its own
    with pytest.raises(ConfigError, match=r"--ablate is for a GPT checkpoint and out holds an RNN.*ablate_heads"):
        refuse_ignored({"ablate": "0.1"}, "rnn", SampleConfig, source="out")


@pytest.mark.parametrize("value", [3, "gumbel", [1], {"bogus": 1}])
def test_a_bad_nested_option_value_is_one_sentence(value):
    """hard_attention= takes its config or a dict of its options; anything else is a ConfigError saying what to
    pass (it was a bare TypeError from deep inside the flat-key handling)."""
    from model import GPTConfig
    with pytest.raises(ConfigError, match="hard_attention (must be|has no option)"):
        GPTConfig(hard_attention=value)
    assert GPTConfig(hard_attention={"estimator": "reinforce"}).hard_attention.estimator == "reinforce"
