"""Feature extraction of the evaluation: batched, in inference mode, with a progress line of its
own; features usable afterwards (the linear probe trains on them); autocast in the run's
precision on a GPU only."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from solo_iclmsr.evaluation import autocast_dtype, extract_features, linear_probe


class _Recorder(nn.Module):
    """A linear backbone that records the batch sizes and the grad / inference mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                           self.training))
        return self.fc(x.flatten(1))


def test_features_are_extracted_in_batches_in_inference_mode(capsys):
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 2, 2), torch.arange(10) % 2
    model = _Recorder().train()
    feats, labels = extract_features(model, TensorDataset(x, y), batch_size=4, name="val")
    assert [c[0] for c in model.calls] == [4, 4, 2]
    assert all(not grad and inference and not training
               for _, grad, inference, training in model.calls)
    assert model.training  # the model's mode is given back
    assert torch.allclose(feats["feats"], model.fc(x.flatten(1)).detach(), atol=1e-6)
    assert labels.tolist() == y.tolist()
    assert not feats["feats"].is_inference()
    err = capsys.readouterr().err
    assert "[evaluate] features of val: 10/10 images" in err and "images/s" in err
    # the features train a probe afterwards (autograd accepts them)
    scores = linear_probe(feats["feats"], labels, {"val": (feats["feats"], labels)}, epochs=2)
    assert 0.0 <= scores["val"].top1 <= 100.0


def test_no_progress_line_without_a_name(capsys):
    extract_features(_Recorder(), TensorDataset(torch.randn(3, 3, 2, 2), torch.zeros(3)))
    assert capsys.readouterr().err == ""


def test_the_run_s_precision_on_a_gpu_only():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype("16-mixed", gpu) is torch.float16
    assert autocast_dtype(16, gpu) is torch.float16
    assert autocast_dtype("bf16-mixed", gpu) is torch.bfloat16
    assert autocast_dtype("32", gpu) is None and autocast_dtype(32, gpu) is None
    assert autocast_dtype(None, gpu) is None
    assert autocast_dtype("16-mixed", cpu) is None and autocast_dtype("bf16-mixed", cpu) is None
