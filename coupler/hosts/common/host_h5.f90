!> The little HDF5 the toy hosts need: a file of named, dimensioned double datasets (dimension
!> scales, so xarray opens it with engine="h5netcdf" and gets named dimensions), scalar
!> attributes, and reading a whole double dataset back (initial states from a truth run).
!> Fortran order: an array a(n1, n2) with dims ['x', 't'] appears in h5py/xarray as (t, x).
module host_h5
  use, intrinsic :: iso_fortran_env, only: dp => real64
  use hdf5
  use h5lt
  use, intrinsic :: iso_c_binding, only: c_int, c_int64_t, c_char, c_null_char
  use host_common, only: atomic_rename
  implicit none
  private

  ! the C calls, whose dimension index is in C order on every HDF5 version (the Fortran
  ! wrappers' index convention has changed between releases)
  interface
    integer(c_int) function c_h5ds_set_scale(dsid, name) bind(C, name='H5DSset_scale')
      import :: c_int64_t, c_int, c_char
      integer(c_int64_t), value :: dsid   ! hid_t is int64_t in HDF5 >= 1.10
      character(kind=c_char), intent(in) :: name(*)
    end function c_h5ds_set_scale
    integer(c_int) function c_h5ds_attach_scale(did, dsid, idx) bind(C, name='H5DSattach_scale')
      import :: c_int64_t, c_int
      integer(c_int64_t), value :: did, dsid
      integer(c_int), value :: idx
    end function c_h5ds_attach_scale
  end interface

  public :: h5_out_t, h5_read_doubles, h5_dataset_shape

  type :: h5_out_t
    integer(hid_t) :: file = -1
    integer :: stat = 0                  !< first error, sticky: later calls do nothing
    character(len=512) :: errmsg = ''
    character(len=1024) :: path = ''     !< the file being written: final_path.tmp
    character(len=1024) :: final_path = ''
    logical :: created = .false.         !< path was created by this writer (so it may remove it)
  contains
    procedure :: create => out_create
    procedure :: dim => out_dim
    procedure :: put1 => out_put1
    procedure :: put2 => out_put2
    procedure :: put3 => out_put3
    procedure :: attr_real => out_attr_real
    procedure :: attr_str => out_attr_str
    procedure :: close => out_close
    procedure :: commit => out_commit
  end type h5_out_t

contains

  !> Starts `path` as path.tmp; commit() makes it `path` (readers never see a partial file).
  subroutine out_create(self, path)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer :: err
    self%final_path = path
    self%path = trim(path)//'.tmp'
    call h5open_f(err)
    if (err == 0) call h5eset_auto_f(0, err)
    if (err == 0) call h5fcreate_f(trim(self%path), H5F_ACC_TRUNC_F, self%file, err)
    self%created = err == 0
    call fail(self, err, 'cannot create')
  end subroutine out_create

  subroutine fail(self, err, what)
    class(h5_out_t), intent(inout) :: self
    integer, intent(in) :: err
    character(len=*), intent(in) :: what
    if (err /= 0 .and. self%stat == 0) then
      self%stat = 1
      self%errmsg = trim(self%path)//': '//what
    end if
  end subroutine fail

  !> A coordinate: a 1-D dataset that is its own dimension scale.
  subroutine out_dim(self, name, values)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(dp), intent(in) :: values(:)
    integer(hid_t) :: did
    integer :: err, e2
    if (self%stat /= 0) return
    call h5ltmake_dataset_double_f(self%file, name, 1, [int(size(values), hsize_t)], values, err)
    if (err == 0) call h5dopen_f(self%file, name, did, err)
    if (err == 0) then
      err = c_h5ds_set_scale(int(did, c_int64_t), name//c_null_char)
      call h5dclose_f(did, e2)
    end if
    call fail(self, err, 'cannot write dimension '//name)
  end subroutine out_dim

  subroutine attach(self, name, dims)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name, dims(:)
    integer(hid_t) :: did, sid
    integer :: err, i, e2
    call h5dopen_f(self%file, name, did, err)
    do i = 1, size(dims)
      if (err /= 0) exit
      call h5dopen_f(self%file, trim(dims(i)), sid, err)
      if (err /= 0) exit
      ! Fortran dimension i is C dimension rank - i
      err = c_h5ds_attach_scale(int(did, c_int64_t), int(sid, c_int64_t), &
                                int(size(dims) - i, c_int))
      call h5dclose_f(sid, e2)
    end do
    call h5dclose_f(did, e2)
    call fail(self, err, 'cannot attach the dimensions of '//name)
  end subroutine attach

  subroutine out_put1(self, name, values, dim)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name, dim
    real(dp), intent(in) :: values(:)
    integer :: err
    character(len=64) :: dims(1)
    if (self%stat /= 0) return
    dims(1) = dim   ! (not an array constructor: gfortran 12 sizes [character(64) :: dim] wrongly)
    call h5ltmake_dataset_double_f(self%file, name, 1, [int(size(values), hsize_t)], values, err)
    call fail(self, err, 'cannot write '//name)
    if (self%stat == 0) call attach(self, name, dims)
  end subroutine out_put1

  subroutine out_put2(self, name, values, dims)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name, dims(2)
    real(dp), intent(in) :: values(:, :)
    integer :: err
    if (self%stat /= 0) return
    call h5ltmake_dataset_double_f(self%file, name, 2, int(shape(values), hsize_t), values, err)
    call fail(self, err, 'cannot write '//name)
    if (self%stat == 0) call attach(self, name, dims)
  end subroutine out_put2

  subroutine out_put3(self, name, values, dims)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name, dims(3)
    real(dp), intent(in) :: values(:, :, :)
    integer :: err
    if (self%stat /= 0) return
    call h5ltmake_dataset_double_f(self%file, name, 3, int(shape(values), hsize_t), values, err)
    call fail(self, err, 'cannot write '//name)
    if (self%stat == 0) call attach(self, name, dims)
  end subroutine out_put3

  !> A file attribute (obj '/') or a dataset attribute.
  subroutine out_attr_real(self, name, value, obj)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(dp), intent(in) :: value
    character(len=*), intent(in), optional :: obj
    integer :: err
    character(len=:), allocatable :: o
    if (self%stat /= 0) return
    o = '/'
    if (present(obj)) o = obj
    call h5ltset_attribute_double_f(self%file, o, name, [value], 1_size_t, err)
    call fail(self, err, 'cannot write attribute '//name)
  end subroutine out_attr_real

  subroutine out_attr_str(self, name, value, obj)
    class(h5_out_t), intent(inout) :: self
    character(len=*), intent(in) :: name, value
    character(len=*), intent(in), optional :: obj
    integer :: err
    character(len=:), allocatable :: o
    if (self%stat /= 0) return
    o = '/'
    if (present(obj)) o = obj
    call h5ltset_attribute_string_f(self%file, o, name, value, err)
    call fail(self, err, 'cannot write attribute '//name)
  end subroutine out_attr_str

  subroutine out_close(self)
    class(h5_out_t), intent(inout) :: self
    integer :: err
    if (self%file >= 0) then
      call h5fclose_f(self%file, err)
      call fail(self, err, 'cannot close')
      self%file = -1
    end if
  end subroutine out_close

  !> Closes the file and renames it to its final name; stat/errmsg: the first error.
  subroutine out_commit(self, stat, errmsg)
    class(h5_out_t), intent(inout) :: self
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: u, ios
    call self%close()
    stat = self%stat
    errmsg = self%errmsg
    if (stat == 0) then
      call atomic_rename(self%path, self%final_path, stat)
      if (stat /= 0) errmsg = 'cannot rename '//trim(self%path)//' to '//trim(self%final_path)
    end if
    ! a file that could not be written whole (disk full, quota) is removed, not left behind
    if (stat /= 0 .and. self%created) then
      open (newunit=u, file=trim(self%path), status='old', action='read', iostat=ios)
      if (ios == 0) close (u, status='delete', iostat=ios)
    end if
  end subroutine out_commit

  !> Shape (Fortran order) of a double dataset; rank 0 with stat /= 0 when it is not there.
  subroutine h5_dataset_shape(path, name, shp, stat, errmsg)
    character(len=*), intent(in) :: path, name
    integer, allocatable, intent(out) :: shp(:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer(hid_t) :: fid
    integer :: err, rank, tclass, e2
    integer(hsize_t) :: dims(7)
    integer(size_t) :: tsize
    logical :: exists
    errmsg = ''
    allocate (shp(0))
    inquire (file=path, exist=exists)
    if (.not. exists) then
      stat = 1
      errmsg = trim(path)//': no such file'
      return
    end if
    call h5open_f(err)
    call h5eset_auto_f(0, e2)
    call h5fopen_f(trim(path), H5F_ACC_RDONLY_F, fid, err)
    if (err /= 0) then
      stat = 1
      errmsg = trim(path)//': not an HDF5 file'
      return
    end if
    call h5ltget_dataset_ndims_f(fid, name, rank, err)
    if (err == 0 .and. rank >= 1 .and. rank <= 7) &
      call h5ltget_dataset_info_f(fid, name, dims, tclass, tsize, err)
    if (err /= 0 .or. rank < 1 .or. rank > 7) then
      stat = 1
      errmsg = trim(path)//': no dataset '//name
    else if (tclass /= H5T_FLOAT_F) then
      stat = 1
      errmsg = trim(path)//': dataset '//name//' is not floating point'
    else
      stat = 0
      shp = int(dims(1:rank))
    end if
    call h5fclose_f(fid, e2)
  end subroutine h5_dataset_shape

  !> Reads a whole floating-point dataset into values (its size must match).
  subroutine h5_read_doubles(path, name, values, stat, errmsg)
    character(len=*), intent(in) :: path, name
    real(dp), intent(out) :: values(:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer, allocatable :: shp(:)
    integer(hid_t) :: fid
    integer :: err, e2
    call h5_dataset_shape(path, name, shp, stat, errmsg)
    if (stat /= 0) return
    if (product(shp) /= size(values)) then
      stat = 1
      write (errmsg, '(a,i0,a,i0)') trim(path)//': dataset '//name//' has ', product(shp), &
        ' values, expected ', size(values)
      return
    end if
    call h5fopen_f(trim(path), H5F_ACC_RDONLY_F, fid, err)
    if (err == 0) call h5ltread_dataset_double_f(fid, name, values, &
                                                 [int(size(values), hsize_t)], err)
    if (err /= 0) then
      stat = 1
      errmsg = trim(path)//': cannot read dataset '//name
    end if
    call h5fclose_f(fid, e2)
  end subroutine h5_read_doubles
end module host_h5
