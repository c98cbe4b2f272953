"""Train: from the current model, take `steps_per_iteration` gradient steps theta <- theta - eta *
grad L."""

import linear

args = linear.parse_args()
train, _, config = linear.inputs(args.data)
model = linear.read_json(args.model)
theta = {"w": model["w"], "b": model["b"]}
eta = config["learning_rate"]
for _ in range(config["steps_per_iteration"]):
    dw, db = linear.gradient(theta, train)
    theta = {"w": theta["w"] - eta * dw, "b": theta["b"] - eta * db}
linear.write_json(args.out, theta)
