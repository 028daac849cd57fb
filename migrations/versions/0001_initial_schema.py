"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 01:01:30.844585
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('civitai_id', sa.BigInteger(), nullable=True),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('creator', sa.String(length=256), nullable=True),
    sa.Column('nsfw', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('civitai_id', name=op.f('uq_models_civitai_id'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_creator'), ['creator'], unique=False)
        batch_op.create_index(batch_op.f('ix_models_name'), ['name'], unique=False)

    op.create_table('registry_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_registry_state'))
    )
    op.create_table('scanned_paths',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=4096), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scanned_paths')),
    sa.UniqueConstraint('path', name=op.f('uq_scanned_paths_path'))
    )
    with op.batch_alter_table('scanned_paths', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scanned_paths_kind'), ['kind'], unique=False)

    op.create_table('tags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
    sa.UniqueConstraint('name', name=op.f('uq_tags_name'))
    )
    op.create_table('embeddings',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('embed_model', sa.String(length=256), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('text_sha256', sa.String(length=64), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_embeddings_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_id', name=op.f('pk_embeddings'))
    )
    op.create_table('model_tags',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('tag_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_tags_model_id_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_model_tags_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_id', 'tag_id', name=op.f('pk_model_tags'))
    )
    with op.batch_alter_table('model_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_tags_tag_id'), ['tag_id'], unique=False)

    op.create_table('versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('civitai_id', sa.BigInteger(), nullable=True),
    sa.Column('name', sa.String(length=512), nullable=True),
    sa.Column('base_model', sa.String(length=64), nullable=True),
    sa.Column('base_family', sa.String(length=8), nullable=False),
    sa.Column('base_family_source', sa.String(length=16), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_versions_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_versions')),
    sa.UniqueConstraint('civitai_id', name=op.f('uq_versions_civitai_id'))
    )
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_versions_base_family'), ['base_family'], unique=False)
        batch_op.create_index(batch_op.f('ix_versions_model_id'), ['model_id'], unique=False)

    op.create_table('files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('civitai_id', sa.BigInteger(), nullable=True),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.Column('path', sa.String(length=4096), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=True),
    sa.Column('is_primary', sa.Boolean(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('sha256_verified', sa.Boolean(), nullable=False),
    sa.Column('autov2', sa.String(length=10), nullable=True),
    sa.Column('format', sa.String(length=32), nullable=True),
    sa.Column('detected_family', sa.String(length=8), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=True),
    sa.Column('alpha', sa.Float(), nullable=True),
    sa.Column('unet_modules', sa.Integer(), nullable=True),
    sa.Column('te_modules', sa.Integer(), nullable=True),
    sa.Column('header_metadata', sa.JSON(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_files_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files')),
    sa.UniqueConstraint('civitai_id', name=op.f('uq_files_civitai_id')),
    sa.UniqueConstraint('path', name=op.f('uq_files_path'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_autov2'), ['autov2'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_format'), ['format'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_status'), ['status'], unique=False)
        batch_op.create_index('ix_files_version_id_primary', ['version_id', 'is_primary'], unique=False)

    op.create_table('trigger_words',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('word', sa.String(length=512), nullable=False),
    sa.Column('word_norm', sa.String(length=512), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_trigger_words_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger_words')),
    sa.UniqueConstraint('version_id', 'word_norm', name=op.f('uq_trigger_words_version_id'))
    )
    with op.batch_alter_table('trigger_words', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trigger_words_word_norm'), ['word_norm'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('trigger_words', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trigger_words_word_norm'))

    op.drop_table('trigger_words')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_version_id_primary')
        batch_op.drop_index(batch_op.f('ix_files_status'))
        batch_op.drop_index(batch_op.f('ix_files_sha256'))
        batch_op.drop_index(batch_op.f('ix_files_name'))
        batch_op.drop_index(batch_op.f('ix_files_format'))
        batch_op.drop_index(batch_op.f('ix_files_autov2'))

    op.drop_table('files')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_versions_model_id'))
        batch_op.drop_index(batch_op.f('ix_versions_base_family'))

    op.drop_table('versions')
    with op.batch_alter_table('model_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_tags_tag_id'))

    op.drop_table('model_tags')
    op.drop_table('embeddings')
    op.drop_table('tags')
    with op.batch_alter_table('scanned_paths', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scanned_paths_kind'))

    op.drop_table('scanned_paths')
    op.drop_table('registry_state')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_name'))
        batch_op.drop_index(batch_op.f('ix_models_creator'))

    op.drop_table('models')
