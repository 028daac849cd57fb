"""versions.downloads, rating, rating_count: Civitai's stats of each version

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 14:10:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('downloads', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('rating', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('rating_count', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_versions_downloads'), ['downloads'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_versions_downloads'))
        batch_op.drop_column('rating_count')
        batch_op.drop_column('rating')
        batch_op.drop_column('downloads')
