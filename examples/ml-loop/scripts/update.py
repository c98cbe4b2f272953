"""Update: the trained candidate becomes the model of this iteration, stamped with its number."""

import linear

args = linear.parse_args()
candidate = linear.read_json(args.train)
linear.write_json(args.out, {"b": candidate["b"], "iteration": args.iteration, "w": candidate["w"]})
