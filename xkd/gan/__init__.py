"""Conditional GANs for cGAN-KD (Ding et al., ESWA 2023; seed_methods.md section 5), a plain library
that knows no experiment run: class-conditional and continuous-label generators and discriminators
(``networks``, ``losses``, ``vicinal``, ``augment``), their resumable training and sample grid
(``training``, ``grid``), cDR-RS subsampling (``subsample``), teacher filtering/relabelling
(``filtering``), the processed fake set on disk (``fakeset``), configured by ``config``. The
run stage that uses them is :mod:`xkd.pipeline.generated`. Import from the modules; this package
imports nothing at load time."""
