rule prepare_data:
    """Download/verify/binarise one dataset (larsvae.steps.prepare_data): npz + manifest."""
    output:
        npz=dataset_file(),
        manifest=manifest_file(),
    log:
        "logs/prepare_data/{dataset}.log",
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "larsvae prepare-data --dataset {wildcards.dataset} --out-dir \"$(dirname {output.npz:q})\""
        " > {log:q} 2>&1"
