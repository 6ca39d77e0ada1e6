"""docs/new_strategy.md, run: its module, experiment file and unit tests are taken from the page's code blocks
(those whose fence says ``file=<path>``), written into a temporary folder and run for real."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TensorAVDataModule
from torch.utils.data import DataLoader

from crmt.cli import main
from crmt.seeding import step_generator
from crmt.strategies.base import MultiModalModule

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "new_strategy.md"
FENCE = re.compile(r"^```(?P<language>\w+) file=(?P<path>\S+)\n(?P<text>.*?)^```$", re.MULTILINE | re.DOTALL)
TINY_DATA = [
    "--data.init_args.num_classes=3", "--data.init_args.train_per_class=3", "--data.init_args.val_per_class=1",
    "--data.init_args.test_per_class=1", "--data.init_args.num_workers=0", "--data.init_args.batch_size=4",
]
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
"""The page's training steps run outside a Trainer, where ``self.log`` only warns."""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared CPU, more threads oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def page_blocks() -> dict[str, tuple[str, str]]:
    """The page's ``file=`` code blocks: repository path -> (language, text)."""
    blocks = {}
    for match in FENCE.finditer(PAGE.read_text(encoding="utf-8")):
        assert match["path"] not in blocks, f"two blocks of {PAGE.name} write {match['path']}"
        blocks[match["path"]] = (match["language"], match["text"])
    return blocks


def one_block(blocks: dict[str, tuple[str, str]], language: str, folder: str) -> str:
    (path,) = [path for path, (lang, _) in blocks.items() if lang == language and path.startswith(folder)]
    return path


def import_file(path: Path, name: str, monkeypatch) -> ModuleType:
    """Import ``path`` as module ``name`` (in ``sys.modules`` for this test only, so the CLI finds its class)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(tmp_path, monkeypatch) -> SimpleNamespace:
    """The page's blocks written under ``tmp_path`` at their repository paths; the strategy module imported under
    the dotted name its path gives inside the package (src/crmt/strategies/x.py -> crmt.strategies.x)."""
    blocks = page_blocks()
    paths = {
        "module": one_block(blocks, "python", "src/crmt/strategies/"),
        "config": one_block(blocks, "yaml", "experiments/"),
        "tests": one_block(blocks, "python", "tests/"),
    }
    assert len(blocks) == len(paths), f"unexpected blocks in {PAGE.name}: {sorted(blocks)}"
    files = {}
    for key, path in paths.items():
        files[key] = tmp_path / "page" / path
        files[key].parent.mkdir(parents=True, exist_ok=True)
        files[key].write_text(blocks[path][1], encoding="utf-8")
    module_name = ".".join(Path(paths["module"]).relative_to("src").with_suffix("").parts)
    module = import_file(files["module"], module_name, monkeypatch)
    return SimpleNamespace(module=module, module_name=module_name, files=files, config=yaml.safe_load(blocks[paths["config"]][1]))


def test_the_config_names_the_strategy_of_the_module_and_the_run_of_its_file_name(example):
    """What `make train EXP=<stem>` and tests/test_cli.py expect of an experiment file."""
    module_path, class_name = example.config["model"]["class_path"].rsplit(".", 1)
    assert module_path == example.module_name
    strategy = getattr(example.module, class_name)
    assert issubclass(strategy, MultiModalModule) and not inspect.isabstract(strategy)
    assert example.config["trainer"]["logger"]["init_args"]["name"] == example.files["config"].stem
    assert "data" not in example.config, "an experiment names no data"
    assert set(example.config["model"]["init_args"]) <= set(inspect.signature(strategy).parameters) | set(
        inspect.signature(MultiModalModule).parameters
    )


def test_the_cli_help_shows_the_arguments_the_class_docstring_documents(example, monkeypatch, capsys):
    """The page says `--model.help <class path>` shows the strategy's own arguments with their docstring text."""
    monkeypatch.setattr(sys, "argv", ["crmt"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", example.config["model"]["class_path"]])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--model.drop_probability DROP_PROBABILITY p, the probability that a training sample loses one modality" in shown
    assert "--model.seed SEED seeds the draws" in shown


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_the_training_step_loss_is_cross_entropy_on_inputs_zeroed_by_hand(example, probability):
    """On a fixed batch: sample i loses modality m when the step-seeded draws say so (u_i < p, m = m_i), its input
    set to zero sample by sample here; the loss is the cross-entropy of a plain forward pass on those inputs."""
    torch.manual_seed(0)
    model = example.module.ModalityDropout(
        num_classes=3, input_shapes=TensorAVDataModule.input_shapes, encoder_width=4, drop_probability=probability, seed=5
    )
    batch = next(iter(DataLoader(TensorAVDataModule(train_size=12).train_set, batch_size=12)))
    assert model.training and model.global_step == 0
    loss = model.training_step(batch, 0)

    generator = step_generator(5, 0)
    uniform = torch.rand(12, generator=generator).tolist()
    lost = torch.randint(2, (12,), generator=generator).tolist()
    inputs = [batch["visual"].clone(), batch["audio"].clone()]
    zeroed = 0
    for i in range(12):
        if uniform[i] < probability:
            inputs[lost[i]][i] = torch.zeros_like(inputs[lost[i]][i])
            zeroed += 1
    assert zeroed in {0.0: [0], 0.5: range(1, 12), 1.0: [12]}[probability], zeroed
    expected = F.cross_entropy(model(inputs).logits, batch["label"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    if probability == 0.0:  # nothing dropped: plain joint training
        assert loss.item() == pytest.approx(F.cross_entropy(model(model.inputs(batch)).logits, batch["label"]).item())


def test_the_experiment_fits_through_the_cli_and_writes_a_checkpoint(example, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["crmt"])
    cli = main(
        [
            "fit", "--config", str(example.files["config"]), f"--data.init_args.root={tmp_path / 'data'}", *TINY_DATA,
            "--model.init_args.encoder_width=4", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path / 'runs'}",
            "--test_after_fit=false",
        ]
    )
    assert type(cli.model) is example.module.ModalityDropout
    assert cli.model.hparams.drop_probability == example.config["model"]["init_args"]["drop_probability"]
    assert cli.trainer.current_epoch == 1 and not cli.trainer.interrupted
    assert {"train/loss", "train/dropped", "val/acc"} <= set(cli.trainer.callback_metrics)
    (checkpoint_path,) = (tmp_path / "runs").rglob("last.ckpt")
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["hyper_parameters"]["drop_probability"] == example.config["model"]["init_args"]["drop_probability"]
    assert "rng_states" in checkpoint and "head.linear.weight" in checkpoint["state_dict"]


def test_the_page_unit_tests_pass(example, monkeypatch):
    tests = import_file(example.files["tests"], "page_" + example.files["tests"].stem, monkeypatch)
    functions = [value for name, value in vars(tests).items() if name.startswith("test_") and callable(value)]
    assert len(functions) >= 2
    for function in functions:
        assert not inspect.signature(function).parameters, f"{function.__name__}: the page's tests take no fixtures"
        function()
