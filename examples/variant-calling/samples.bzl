# The sample sheet, and the steps every sample goes through.
#
# To add a sample, put its reads in data/samples/<name>.fastq and its name below; the per-sample
# steps and the variant call pick it up. Each step is one cached action: editing one sample's
# reads re-runs that sample's steps and the call, nothing else.

SAMPLES = ["A", "B", "C"]

def per_sample(sample):
    """Align one sample's reads to the indexed genome and sort them (bwa mem | samtools sort),
    then index the sorted BAM (samtools index)."""
    genrule(
        name = "sorted_" + sample,
        srcs = ["data/samples/%s.fastq" % sample, ":genome", ":genome_index"],
        outs = ["sorted/%s.bam" % sample],
        cmd = ("bwa mem -t 1 -R '@RG\\tID:{s}\\tSM:{s}' $(location :genome) " +
               "$(location data/samples/{s}.fastq) 2> /dev/null | " +
               "samtools sort -O bam -o $@ -").format(s = sample),
        message = "bwa mem | samtools sort " + sample,
    )
    genrule(
        name = "indexed_" + sample,
        srcs = [":sorted_" + sample],
        outs = ["sorted/%s.bam.bai" % sample],
        cmd = "samtools index $< $@",
        message = "samtools index " + sample,
    )
