# larsvae workflow: Bauer & Mnih (2019) as a cached DAG.
#   snakemake reports/table1.md --cores all --resources gpu=4        (paper budget; target first:
#   --resources/--configfile take several values and would swallow a target after them)
#   snakemake reports/quick/table1.md --cores 2 --configfile params/quick.yaml
# Parameters live in params/*.yaml (the paper's budget unless --configfile names another; a
# named file replaces it). Each budget owns its outputs (params `paths`: runs/<budget>/ and
# its reports folder), so one budget's files never stand in for another's targets. Runtime
# choices live in workflow/profiles/.
if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/params/paper.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="|".join(lconfig.DATASETS),
    arch="|".join(lconfig.ARCHS),
    prior=prior_tag(lconfig.PRIORS),
    mode="|".join(lconfig.MODES),
    seed=r"\d+",
    shard=r"\d+",
    nshards=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True


rule main:
    """The main job only (Table 1 cells and reports); `rule all` adds the appendix."""
    input:
        main_targets(),
