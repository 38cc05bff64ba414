"""MS-COCO 2014: images with their captions (for text-to-image feature extraction)."""
import json
import os

import numpy as np

from libs.data.common import ImageDataset, check_split, read_image
from libs.errors import UserError


class MSCOCO(ImageDataset):
    """MS-COCO 2014 images and their captions, from the release layout in ``path``: ``train2014/*.jpg``,
    ``val2014/*.jpg`` and ``annotations/captions_{train,val}2014.json``.

    Items are the images that have captions, sorted by COCO image id, unlabeled; ``captions[i]`` lists the captions
    of image i in the order of the annotations file, ``image_ids[i]`` its COCO id. Images go through
    ``crop_and_resize`` (box halving, bicubic, centre crop). Text-to-image FIDs are computed against 'val'.
    """

    name = 'mscoco'
    splits = ('train', 'val')
    fid_stats_pattern = 'assets/fid_stats/fid_stats_mscoco{}_val.npz'

    def __init__(self, path: str = 'assets/datasets/coco', split: str = 'train', resolution: int = 256,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        annotations = os.path.join(path, 'annotations', f'captions_{split}2014.json')
        image_dir = os.path.join(path, f'{split}2014')
        if not os.path.isfile(annotations) or not os.path.isdir(image_dir):
            raise UserError(f'MS-COCO {split} not found at {path}: put the COCO 2014 release there so that '
                            f'{image_dir}/*.jpg and {annotations} exist')
        try:
            with open(annotations) as f:
                content = json.load(f)
            files = {int(image['id']): image['file_name'] for image in content['images']}
            captions = {}
            for annotation in content['annotations']:
                captions.setdefault(int(annotation['image_id']), []).append(str(annotation['caption']))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f'{annotations} is not a COCO captions file ("images" with id and file_name, '
                            f'"annotations" with image_id and caption): {type(e).__name__} {e}') from None
        ids = sorted(i for i in files if i in captions)
        if not ids:
            raise UserError(f'no image of {annotations} has a caption: use the COCO 2014 captions annotations')
        present = set(os.listdir(image_dir))
        missing = [files[i] for i in ids if files[i] not in present]
        if missing:
            raise UserError(f'{len(missing)} images listed in {annotations} are missing from {image_dir} (first: '
                            f'{missing[0]}): extract {split}2014.zip into {path}')
        self.image_ids = np.asarray(ids, dtype=np.int64)
        self.files = [os.path.join(image_dir, files[i]) for i in ids]
        self.captions = [captions[i] for i in ids]
        self.default_fid_stats = self.fid_stats_pattern.format(int(resolution))
        super().__init__(split, resolution, 3, 0, np.full(len(ids), -1), fid_stats)

    def _image(self, index):
        return read_image(self.files[index], self.resolution)
