"""The frozen CLIP text encoder that turns captions into the context tokens of the text-to-image U-ViT.

Captions are encoded as the U-ViT release encoded MS-COCO: the Hugging Face ``CLIPTextModel`` and ``CLIPTokenizer``
of ``openai/clip-vit-large-patch14``, token ids padded (with the end token) and truncated to ``max_length = 77``,
no attention mask, and the features are the model's ``last_hidden_state``: ``(B, 77, 768)`` float32. The embedding
of the empty prompt ``""`` is the unconditional context for classifier-free guidance.

Everything is read from a local directory; nothing is ever downloaded.
"""
import os

import torch

from libs.errors import UserError, first_line

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEXT_ENCODER_DIR = os.path.join('assets', 'clip-vit-large-patch14')
SOURCE_MODEL = 'openai/clip-vit-large-patch14'
CONFIG_FILE = 'config.json'
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'model.safetensors.index.json',
                'pytorch_model.bin.index.json')
TOKENIZER_FILES = ('vocab.json', 'merges.txt')
FAST_TOKENIZER_FILE = 'tokenizer.json'
NEEDED_FILES = 'config.json, model.safetensors (or pytorch_model.bin), vocab.json and merges.txt'


def _missing_files(path: str) -> list:
    """Names of the files ``path`` lacks for a CLIP text model and its tokenizer (empty if complete)."""
    present = set(os.listdir(path))
    missing = []
    if CONFIG_FILE not in present:
        missing.append(CONFIG_FILE)
    if not present.intersection(WEIGHT_FILES):
        missing.append(f'{WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})')
    if FAST_TOKENIZER_FILE not in present:
        missing.extend(name for name in TOKENIZER_FILES if name not in present)
    return missing


class FrozenCLIPTextEncoder:
    """A CLIP text model and its tokenizer, in eval mode with gradients off.

    ``encode(prompts)`` gives ``(B, max_length, hidden_size)`` float32 features on ``self.device``.
    """

    def __init__(self, model, tokenizer, max_length: int = 77):
        limit = model.config.max_position_embeddings
        if not 1 <= max_length <= limit:
            raise UserError(f'text encoder max_length {max_length} must lie in [1, {limit}] '
                            f'(the model\'s max_position_embeddings)')
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._empty_context = None

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device):
        self.model.to(device)
        self._empty_context = None
        return self

    def tokenize(self, prompts: list) -> torch.Tensor:
        """Token ids ``(B, max_length)`` int64 on the CPU: start token, the caption, end token, then end-token
        padding; captions longer than ``max_length`` tokens are cut and still end with the end token."""
        if isinstance(prompts, str):
            raise TypeError('prompts must be a list of strings, not a single string')
        batch = self.tokenizer(list(prompts), padding='max_length', truncation=True, max_length=self.max_length,
                               return_tensors='pt')
        return batch['input_ids']

    @torch.no_grad()
    def encode(self, prompts: list) -> torch.Tensor:
        """Last hidden states ``(B, max_length, hidden_size)`` float32 for a list of ``B`` captions."""
        ids = self.tokenize(prompts).to(self.device)
        return self.model(input_ids=ids).last_hidden_state.float()

    def empty_context(self) -> torch.Tensor:
        """The features ``(max_length, hidden_size)`` of the empty prompt, the unconditional context for
        classifier-free guidance (the same as ``encode([''])[0]``)."""
        if self._empty_context is None:
            self._empty_context = self.encode([''])[0]
        return self._empty_context.clone()


def encode_in_batches(encoder: FrozenCLIPTextEncoder, prompts: list, batch_size: int) -> torch.Tensor:
    """``encoder.encode(prompts)`` computed ``batch_size`` prompts at a time and gathered on the CPU, so the
    device holds one batch at a time: ``(len(prompts), max_length, hidden_size)`` float32."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    if isinstance(prompts, str):
        raise TypeError('prompts must be a list of strings, not a single string')
    prompts = list(prompts)
    out = torch.empty(len(prompts), encoder.max_length, encoder.hidden_size, dtype=torch.float32)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        out[start:start + len(chunk)] = encoder.encode(chunk).cpu()
    return out


def load_text_encoder(path: str = None, device='cpu', max_length: int = 77) -> FrozenCLIPTextEncoder:
    """The frozen CLIP text encoder stored in the local directory ``path`` (default
    ``assets/clip-vit-large-patch14/``): a downloaded ``openai/clip-vit-large-patch14`` (its config.json may be the
    full CLIP config; only the text tower is loaded) or a saved ``CLIPTextModel`` with vocab.json and merges.txt."""
    from transformers import CLIPTextModel, CLIPTokenizer

    if not path:
        path = os.path.join(REPO_ROOT, DEFAULT_TEXT_ENCODER_DIR)
    path = os.path.normpath(path)
    where = f'put {NEEDED_FILES} of {SOURCE_MODEL} in {path}/ (default location {DEFAULT_TEXT_ENCODER_DIR}/)'
    if not os.path.isdir(path):
        raise UserError(f'CLIP text encoder directory {path}/ not found: {where}')
    missing = _missing_files(path)
    if missing:
        raise UserError(f'CLIP text encoder directory {path}/ lacks {", ".join(missing)}: {where}')
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        model = CLIPTextModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f'cannot load the CLIP text encoder from {path}/: {first_line(e)}') from None
    return FrozenCLIPTextEncoder(model, tokenizer, max_length).to(device)
