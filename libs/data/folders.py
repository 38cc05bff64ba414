"""Your own images: any folder of image files, optionally one subfolder per class."""
import os

import numpy as np
from PIL import Image

from libs.data.common import (IMAGE_EXTENSIONS, ImageDataset, check_split, describe, hwc_to_tensor, list_images,
                               read_image)
from libs.errors import UserError


class ImageFolder(ImageDataset):
    """Any folder of images (recursive; .png .jpg .jpeg .webp .bmp), RGB.

    With ``resolution`` every image goes through ``crop_and_resize``; without it the images are used at their own
    size, which must be one square size for all of them (a folder of samples, say). With
    ``labels_from_subfolders`` the class of an image is its first-level subfolder (sorted names -> 0..K-1);
    otherwise every label is -1. Only a 'train' split exists.
    """

    name = 'image_folder'
    label_classes = None
    splits = ('train',)

    def __init__(self, path=None, resolution=None, split: str = 'train', labels_from_subfolders: bool = False,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        if not path:
            raise UserError('image_folder needs a folder: set config.dataset.path to a folder of images')
        if not os.path.isdir(path):
            raise UserError(f'image folder not found at {path}: set config.dataset.path to a folder of images')
        files = list_images(path)
        if not files:
            raise UserError(f'no images ({" ".join(IMAGE_EXTENSIONS)}) under {path}: put images there or fix '
                            f'config.dataset.path')
        if labels_from_subfolders:
            rel = [os.path.relpath(f, path).split(os.sep) for f in files]
            loose = [os.sep.join(r) for r in rel if len(r) == 1]
            if loose:
                raise UserError(f'{os.path.join(path, loose[0])} is not in a class subfolder: move it into '
                                f'{path}/<class>/ or set config.dataset.labels_from_subfolders=False')
            classes = sorted({r[0] for r in rel})
            index = {c: i for i, c in enumerate(classes)}
            labels, num_classes = [index[r[0]] for r in rel], len(classes)
            self.classes = classes
        else:
            labels, num_classes = [-1] * len(files), 0
            self.classes = []
        self.files = files
        self.native_size = not resolution
        if self.native_size:
            resolution = _common_square_size(path, files)
        super().__init__(split, int(resolution), 3, num_classes, np.asarray(labels), fid_stats)

    @classmethod
    def describe(cls, cfg, resolution: int):
        if not cfg.get('labels_from_subfolders', False):
            return 0, cfg.get('fid_stats', None)
        return describe(cls, cfg, resolution)

    def _image(self, index):
        if not self.native_size:
            return read_image(self.files[index], self.resolution)
        with Image.open(self.files[index]) as img:
            return hwc_to_tensor(np.asarray(img.convert('RGB')))


def _common_square_size(path: str, files: list) -> int:
    """The one square size of all ``files``; otherwise a UserError asking for a resolution."""
    first = None
    for file in files:
        with Image.open(file) as img:
            size = img.size
        if first is None:
            first = (size, file)
        if size != first[0] or size[0] != size[1]:
            found = (f'{size[0]}x{size[1]} in {os.path.relpath(file, path)}' if file == first[1] else
                     f'{first[0][0]}x{first[0][1]} in {os.path.relpath(first[1], path)}, {size[0]}x{size[1]} in '
                     f'{os.path.relpath(file, path)}')
            raise UserError(f'images in {path} are not all of one square size ({found}): set a resolution '
                            f'(config.dataset.resolution or --resolution) to center-crop and resize them')
    return first[0][0]
