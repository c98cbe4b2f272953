# feedback_loop: the closed loop train -> evaluate -> gap -> update, run for iterations 1, 2, ...
# until a gap result says converged, or for at most `max_iterations` iterations.
#
#     load("@posbuild//rules:feedback_loop.bzl", "feedback_loop")
#
#     feedback_loop(
#         name = "fit",
#         data = [":train_split", ":validation_split"],   # labels handed to every stage
#         initial_model = "init.json",                    # optional: the model before iteration 1
#         train = "train.py",
#         evaluate = "evaluate.py",
#         gap = "gap.py",
#         update = "update.py",
#         max_iterations = 20,
#         deps = ["common.py"],                           # modules the stage scripts import
#     )
#
# Outputs of the target `name`:
#     <name>/model.json     the final model: the model of the first iteration whose gap result says
#                           converged, or of iteration `max_iterations`
#     <name>/history.json   {"converged": bool, "iterations": k, "history": [{"iteration": i,
#                           "gap": <gap result i>}, ...]} for iterations 1..k (k as above)
#
# Arguments:
#     name            the target name; every generated target starts with it
#     data            labels of the data inputs (source files or targets), given to every stage
#     train, evaluate, gap, update
#                     the four stage scripts (labels of Python files), run with `python3`
#     max_iterations  the largest number of iterations (an int >= 1)
#     initial_model   optional label of the model iteration 1 starts from
#     deps            labels of further code the stage scripts use (imported modules, configs):
#                     inputs of every stage and part of its code hash
#     version         versions declared by every action of the loop, beside {"model": "<i>"}
#     **kwargs        passed on to every genrule (tags, resources, timeout, env, ...)
#
# The stage script contract. Every stage is run as `python3 SCRIPT ARGS` in the action's sandbox,
# with paths relative to it, and must write the file named by --out:
#
#     train     --data D... --iteration i --out T_i [--model M_(i-1)] [--gap G_(i-1)]
#     evaluate  --data D... --iteration i --out E_i --model T_i
#     gap       --data D... --iteration i --out G_i --model T_i --evaluation E_i [--gap G_(i-1)]
#     update    --data D... --iteration i --out M_i --train T_i --gap G_i [--model M_(i-1)]
#
# --data takes one or more paths (every file of every `data` label, in order). --model is absent
# in iteration 1 without `initial_model`; --gap (the previous gap result) is absent in iteration 1.
# G_i must be a JSON object with a boolean "converged" (anything else fails the gap action);
# other keys (loss, metrics, ...) are kept in history.json. Model and train files are opaque bytes.
#
# Every stage of iteration i is one ordinary cached genrule, `<name>_train_<i>`,
# `<name>_evaluate_<i>`, `<name>_gap_<i>`, `<name>_update_<i>`, declaring the version
# {"model": "<i>"}. Iteration i+1 depends on the gap result of iteration i, so that gap analysis
# always completes first. Each stage of iteration i >= 2 first reads G_(i-1) inside its action:
# once it says converged, the stage does no work and copies its own output of iteration i-1
# (so M_i = M_(i-1) and G_i = G_(i-1)). Hence re-running with nothing changed executes nothing;
# raising max_iterations executes the new iterations' actions (cheap copies once converged) and
# the final `<name>` step; changing data, a script or the initial model re-executes from
# iteration 1 on (actions whose outputs come out byte-identical let their dependents hit the
# cache). The same inputs always give the same number of iterations and the same bytes, provided
# the stage scripts are deterministic.

load("@posbuild//rules:_text.bzl", "check_name")

# Exit 0: converged; 10: not converged; anything else: not a gap result.
_CHECK = """
import json, sys
path = sys.argv[1]
try:
    with open(path) as f:
        result = json.load(f)
except (OSError, ValueError) as error:
    sys.exit("feedback_loop: %s is not a JSON gap result: %s" % (path, error))
if not isinstance(result, dict) or not isinstance(result.get("converged"), bool):
    sys.exit('feedback_loop: %s must be a JSON object with a boolean "converged"' % path)
sys.exit(0 if result["converged"] else 10)
"""

_FINAL = """
import json, shutil, sys
model_out, history_out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
gaps, models = sys.argv[4:4 + n], sys.argv[4 + n:4 + 2 * n]
history, final = [], n
for i, path in enumerate(gaps, 1):
    with open(path) as f:
        result = json.load(f)
    history.append({"iteration": i, "gap": result})
    if result.get("converged") is True:
        final = i
        break
shutil.copyfile(models[final - 1], model_out)
with open(history_out, "w") as f:
    json.dump({"converged": history[-1]["gap"]["converged"], "iterations": final, "history": history},
              f, indent=2, sort_keys=True)
    f.write("\\n")
"""

_STAGES = ("train", "evaluate", "gap", "update")

def _label(value, what, name):
    if type(value) != "string" or not value:
        fail("feedback_loop '%s': '%s' must be a label string" % (name, what))
    return value

def feedback_loop(name, data, train, evaluate, gap, update, max_iterations, initial_model = None,
                  deps = [], version = {}, **kwargs):
    """Unrolls the loop into max_iterations x 4 cached genrules and one final step `name`."""
    check_name("feedback_loop", name)
    if type(max_iterations) != "int" or max_iterations < 1:
        fail("feedback_loop '%s': 'max_iterations' must be an int >= 1, got %r" % (name, max_iterations))
    if type(data) != "list" or not data:
        fail("feedback_loop '%s': 'data' must be a non-empty list of labels" % name)
    for label in data:
        _label(label, "data", name)
    scripts = {"train": train, "evaluate": evaluate, "gap": gap, "update": update}
    for stage in _STAGES:
        _label(scripts[stage], stage, name)
    if initial_model != None:
        _label(initial_model, "initial_model", name)
    if type(deps) != "list":
        fail("feedback_loop '%s': 'deps' must be a list of labels" % name)
    if type(version) != "dict" or "model" in version:
        fail("feedback_loop '%s': 'version' must be a dict without the key 'model' (the loop sets it)" % name)

    env = dict(kwargs.pop("env", {}))
    env["POSBUILD_LOOP_CHECK"] = _CHECK
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    data_args = "--data " + " ".join(["$(locations %s)" % label for label in data])

    def target(stage, i):
        return ":%s_%s_%d" % (name, stage, i)

    def out(stage, i):
        return "%s/%s_%d.json" % (name, "model" if stage == "update" else stage, i)

    for i in range(1, max_iterations + 1):
        prev_model = target("update", i - 1) if i > 1 else initial_model
        prev_gap = target("gap", i - 1) if i > 1 else None
        model_arg = " --model $(location %s)" % prev_model if prev_model else ""
        gap_arg = " --gap $(location %s)" % prev_gap if prev_gap else ""
        common = "%s --iteration %d --out $@" % (data_args, i)
        stage_args = {
            "train": (common + model_arg + gap_arg, [prev_model, prev_gap]),
            "evaluate": (common + " --model $(location %s)" % target("train", i), [target("train", i)]),
            "gap": (common + " --model $(location %s) --evaluation $(location %s)" % (target("train", i), target("evaluate", i)) + gap_arg,
                    [target("train", i), target("evaluate", i), prev_gap]),
            "update": (common + " --train $(location %s) --gap $(location %s)" % (target("train", i), target("gap", i)) + model_arg,
                       [target("train", i), target("gap", i), prev_model]),
        }
        for stage in _STAGES:
            args, inputs = stage_args[stage]
            run = "python3 $(location %s) %s" % (scripts[stage], args)
            if stage == "gap":
                # The gap result must be a JSON object with a boolean "converged".
                run = "%s && { python3 -I -S -c \"$$POSBUILD_LOOP_CHECK\" $@ && rc=0 || rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 10 ]; }" % run
            srcs = list(data) + [x for x in inputs if x]
            if prev_gap:
                # Skip once converged: the check runs inside the action, so the graph stays static.
                previous = target(stage, i - 1)
                if previous not in srcs:
                    srcs.append(previous)
                if prev_gap not in srcs:
                    srcs.append(prev_gap)
                cmd = ("python3 -I -S -c \"$$POSBUILD_LOOP_CHECK\" $(location %s) && rc=0 || rc=$$?; " % prev_gap +
                       "if [ $$rc -eq 0 ]; then cp $(location %s) $@; " % previous +
                       "elif [ $$rc -eq 10 ]; then %s; else exit $$rc; fi" % run)
            else:
                cmd = run
            declared = dict(version)
            declared["model"] = str(i)
            genrule(
                name = "%s_%s_%d" % (name, stage, i),
                srcs = srcs,
                tools = [scripts[stage]] + [d for d in deps if d != scripts[stage]],
                outs = [out(stage, i)],
                cmd = cmd,
                env = env,
                version = declared,
                **kwargs
            )

    final_env = dict(env)
    final_env["POSBUILD_LOOP_FINAL"] = _FINAL
    gaps = [target("gap", i) for i in range(1, max_iterations + 1)]
    models = [target("update", i) for i in range(1, max_iterations + 1)]
    genrule(
        name = name,
        srcs = gaps + models,
        outs = [name + "/model.json", name + "/history.json"],
        cmd = "python3 -I -S -c \"$$POSBUILD_LOOP_FINAL\" $(OUTS) %d %s %s" % (
            max_iterations,
            " ".join(["$(location %s)" % g for g in gaps]),
            " ".join(["$(location %s)" % m for m in models]),
        ),
        env = final_env,
        version = version,
        **kwargs
    )
