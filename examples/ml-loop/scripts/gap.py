"""Gap analysis: converged once the validation loss improves, but by less than `tolerance`
(relative)."""

import linear

args = linear.parse_args()
_, _, config = linear.inputs(args.data)
evaluation = linear.read_json(args.evaluation)
current = evaluation["validation_loss"]
previous = linear.read_json(args.gap)["validation_loss"] if args.gap else None
improvement = None if previous is None else (previous - current) / previous
linear.write_json(args.out, {
    "converged": improvement is not None and 0 <= improvement < config["tolerance"],
    "improvement": improvement,
    "iteration": args.iteration,
    "train_loss": evaluation["train_loss"],
    "validation_loss": current,
})
