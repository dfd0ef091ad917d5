"""Train LeNet-5 on MNIST from Python: the README's command as a TrainConfig.

    numbacnn train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 --lr 0.05 \
                   --momentum 0.9 --out runs/lenet5_example

    python examples/train_lenet_mnist.py [--epochs 3] [--out runs/lenet5_example] [--resume]

Every setting the command line has is a field of TrainConfig (the fields not given here
keep the CLI's defaults: cosine schedule, seed 0, no augmentation); run() seeds, builds
the model, pads MNIST to 32 x 32, builds the loaders, SGD and the schedule, and calls
numbacnn.train.fit, which writes OUT/checkpoint.npz, OUT/metrics.json and OUT/curves.png
after every epoch. --resume continues the run stored in OUT.
"""

import argparse

from numbacnn.recipe import TrainConfig, run

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--out", default="runs/lenet5_example")
p.add_argument("--resume", action="store_true")
p.add_argument("--limit-train", type=int, default=None, help="first N training images only")
args = p.parse_args()

config = TrainConfig(
    model="lenet5",
    dataset="mnist",
    epochs=args.epochs,
    batch_size=64,
    lr=0.05,
    momentum=0.9,
    out=args.out,
    limit_train=args.limit_train,
)
metrics = run(config, resume=args.resume)
for m in metrics:
    print(
        f"epoch {m['epoch']}: test accuracy {100 * m['test_accuracy']:.2f}%, "
        f"{m['seconds']:.1f} s ({m['images_per_second']:.0f} images/s)"
    )
