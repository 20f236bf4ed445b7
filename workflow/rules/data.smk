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


rule check_data:
    """Every split of the npz against its manifest's sha256: the training and evaluation jobs
    need this stamp, so a corrupted dataset fails here and no good checkpoint is replaced."""
    input:
        npz=dataset_file(),
        manifest=manifest_file(),
    output:
        verified_file(),
    log:
        "logs/check_data/{dataset}.log",
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "larsvae check-data --dataset-file {input.npz:q} --out {output:q} > {log:q} 2>&1"


rule prepare_labels:
    """Class labels beside the prepared npz (Figures D.10-D.14 colour the latent codes by
    digit), read from the same checksummed source and checked against the npz's images."""
    input:
        npz=dataset_file(),
        verified=verified_file(),
    output:
        labels_file(),
    log:
        "logs/prepare_labels/{dataset}.log",
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "larsvae prepare-labels --dataset {wildcards.dataset} --dataset-file {input.npz:q}"
        " --out {output:q} > {log:q} 2>&1"
