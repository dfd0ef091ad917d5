"""numbacnn: a small, fast, honest CNN engine whose kernels are explicit Numba loop nests."""

__version__ = "0.1.0"

from .gradient_check import gradcheck

__all__ = ["load", "gradcheck", "__version__"]


def load(path, model=None):
    """A model with the weights in ``path``: a .safetensors file, a PyTorch .pt/.pth
    state_dict (read only through ``torch.load(weights_only=True)``) or a numbacnn
    checkpoint .npz; in eval mode, its ``classes`` the class names the file records.

    model: None (the model the file records), a registry name ("resnet18"; built with the
    class count and input channels of the weights) or a Module to load into. Raises
    FileNotFoundError, ValueError naming the file. See numbacnn.bridges.weights.load.
    """
    from .bridges.weights import load as load_weights

    return load_weights(path, model)
