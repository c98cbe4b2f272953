"""Evaluate: the candidate model's loss on the training and the validation split."""

import linear

args = linear.parse_args()
train, validation, _ = linear.inputs(args.data)
model = linear.read_json(args.model)
linear.write_json(args.out, {
    "iteration": args.iteration,
    "train_loss": linear.loss(model, train),
    "validation_loss": linear.loss(model, validation),
})
