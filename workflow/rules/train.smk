# Three training rules, one per training regime, so that profiles can size them apart.
# The checkpoint path encodes the cell: models/{dataset}/{arch}/{prior}/{mode}/seed{seed}/.


rule train_standard:
    """Standard (non-LARS) prior trained from scratch: the Table 1 baseline."""
    input:
        data=train_data,
    output:
        model="models/{dataset}/{arch}/{prior}/standard/seed{seed}/model.pt",
        curve="models/{dataset}/{arch}/{prior}/standard/seed{seed}/curve.tsv",
    wildcard_constraints:
        prior="gaussian|realnvp|maf",
    log:
        "logs/train/{dataset}/{arch}/{prior}/standard/seed{seed}.log",
    params:
        model=model_params,
        train=train_params,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae train --threads {threads} --dataset-file {input.data:q}"
        " --arch {wildcards.arch} --prior {wildcards.prior} --seed {wildcards.seed}"
        " --model-params {params.model:q} --train-params {params.train:q}"
        " --out {output.model:q} > {log:q} 2>&1"


rule train_joint:
    """LARS prior trained jointly with encoder/decoder from scratch (Algorithm 1)."""
    input:
        data=train_data,
    output:
        model="models/{dataset}/{arch}/{prior}/standard/seed{seed}/model.pt",
        curve="models/{dataset}/{arch}/{prior}/standard/seed{seed}/curve.tsv",
    wildcard_constraints:
        prior="lars|lars_realnvp",
    log:
        "logs/train/{dataset}/{arch}/{prior}/standard/seed{seed}.log",
    params:
        model=model_params,
        train=train_params,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae train --threads {threads} --dataset-file {input.data:q}"
        " --arch {wildcards.arch} --prior {wildcards.prior} --seed {wildcards.seed}"
        " --model-params {params.model:q} --train-params {params.train:q}"
        " --out {output.model:q} > {log:q} 2>&1"


rule train_posthoc:
    """Post-hoc LARS: a(z) trained on a frozen standard-prior model (same cell, gaussian)."""
    input:
        data=train_data,
        init=posthoc_init,
    output:
        model="models/{dataset}/{arch}/{prior}/posthoc/seed{seed}/model.pt",
        curve="models/{dataset}/{arch}/{prior}/posthoc/seed{seed}/curve.tsv",
    wildcard_constraints:
        prior="lars",
    log:
        "logs/train/{dataset}/{arch}/{prior}/posthoc/seed{seed}.log",
    params:
        model=model_params,
        train=posthoc_params,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "OMP_NUM_THREADS={threads} gpu_slot larsvae train --threads {threads} --dataset-file {input.data:q}"
        " --arch {wildcards.arch} --prior {wildcards.prior} --seed {wildcards.seed}"
        " --model-params {params.model:q} --train-params {params.train:q}"
        " --init {input.init:q} --posthoc --out {output.model:q} > {log:q} 2>&1"
