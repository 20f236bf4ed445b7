rule prepare_data:
    """Download/verify/binarise one dataset (larsvae.data.prepare): npz + manifest."""
    output:
        npz="data/processed/{dataset}.npz",
        manifest="data/processed/{dataset}.json",
    log:
        "logs/prepare_data/{dataset}.log",
    params:
        mirrors=mirror_args(),
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "larsvae prepare-data --dataset {wildcards.dataset} --out-dir data/processed"
        " {params.mirrors} > {log:q} 2>&1"
