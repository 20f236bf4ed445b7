# Three training rules, one per training regime, so that profiles can size them apart. Each
# passes only the params keys its step reads (step_keys in workflow/plan.py), so a changed key
# retrains exactly the cells that read it.


rule train_standard:
    """Standard (non-LARS) prior trained from scratch: the Table 1 baseline."""
    input:
        data=train_data,
        verified=verified,
    output:
        model=L.model(mode="standard"),
        curve=L.curve(mode="standard"),
    wildcard_constraints:
        prior=prior_tag(p for p in lconfig.PRIORS if p not in lconfig.LARS_PRIORS),
    log:
        L.log("train", mode="standard"),
    params:
        prior=prior_args,
        model=step_params("train", "model", mode="standard"),
        train=step_params("train", "train", mode="standard"),
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae train --threads {threads}"
        " --dataset-file {input.data:q} --arch {wildcards.arch} {params.prior}"
        " --seed {wildcards.seed} --model-params {params.model:q}"
        " --train-params {params.train:q} --out {output.model:q} > {log:q} 2>&1"


rule train_joint:
    """LARS prior trained jointly with encoder/decoder from scratch (Algorithm 1)."""
    input:
        data=train_data,
        verified=verified,
    output:
        model=L.model(mode="standard"),
        curve=L.curve(mode="standard"),
    wildcard_constraints:
        prior=prior_tag(lconfig.LARS_PRIORS),
    log:
        L.log("train", mode="standard"),
    params:
        prior=prior_args,
        model=step_params("train", "model", mode="standard"),
        train=step_params("train", "train", mode="standard"),
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae train --threads {threads}"
        " --dataset-file {input.data:q} --arch {wildcards.arch} {params.prior}"
        " --seed {wildcards.seed} --model-params {params.model:q}"
        " --train-params {params.train:q} --out {output.model:q} > {log:q} 2>&1"


rule train_posthoc:
    """Post-hoc LARS: a(z) trained on the frozen standard-prior model of the same cell."""
    input:
        data=train_data,
        verified=verified,
        init=posthoc_init,
    output:
        model=L.model(mode="posthoc"),
        curve=L.curve(mode="posthoc"),
    wildcard_constraints:
        prior=prior_tag(["lars"]),
    log:
        L.log("train", mode="posthoc"),
    params:
        prior=prior_args,
        model=step_params("train_posthoc", "model", mode="posthoc"),
        train=step_params("train_posthoc", "posthoc", mode="posthoc"),
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae train --threads {threads}"
        " --dataset-file {input.data:q} --arch {wildcards.arch} {params.prior}"
        " --seed {wildcards.seed} --model-params {params.model:q}"
        " --train-params {params.train:q} --init {input.init:q}"
        " --out {output.model:q} > {log:q} 2>&1"
